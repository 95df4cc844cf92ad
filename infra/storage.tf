# Output bucket: Earth Engine exports tiles here; the services write run records, STAC and error records.
resource "google_storage_bucket" "outputs" {
  #checkov:skip=CKV_GCP_62:Access is recorded by Cloud Audit Logs (Data Access) instead of legacy usage-log objects.
  name                        = var.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_outputs

  # Versioning and soft delete: an overwrite or delete (rerun=overwrite, a bad manifest) can be undone.
  versioning {
    enabled = true
  }

  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_retention_days * 86400
  }

  # Error records are diagnostics, not products: expire them where they are written, under
  # {out_folder}/_errors/ of each request and under LEAF_ERRORS_URI (_errors/, undecodable messages).
  # A lifecycle condition matches literal prefixes only, so each out_folder is listed (var.out_folders).
  lifecycle_rule {
    condition {
      age            = var.error_record_retention_days
      matches_prefix = local.error_record_prefixes
      matches_suffix = [".json"]
    }
    action {
      type = "Delete"
    }
  }

  # Replaced versions (STAC items are rewritten on every finalize) would otherwise accumulate forever.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis_ready]
}

# Staging bucket for `gcloud builds submit` sources, readable by the build service account only.
resource "google_storage_bucket" "build_source" {
  #checkov:skip=CKV_GCP_62:Holds throw-away build source tarballs; Cloud Audit Logs cover access.
  #checkov:skip=CKV_GCP_78:Source tarballs are reproducible from git and expire after a week; versions add nothing.
  name                        = "${var.project_id}-leaf-build-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis_ready]
}

locals {
  error_record_prefixes = distinct(concat(
    [local.errors_prefix],
    [for folder in var.out_folders : "${trim(folder, "/")}/${local.errors_prefix}"],
  ))
}
