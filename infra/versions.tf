terraform {
  required_version = ">= 1.5"

  # Pinned to the releases whose schemas tests/test_infra.py checks every resource against
  # (scripts/infra_tools.sh: @cdktf/provider-google 16.12.1 = google 6.50.0, @cdktf/provider-time 11.0.1 = time 0.13.1).
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.50.0"
    }
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13.1"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id

  depends_on = [google_project_service.apis]
}

# Google-managed identities that act on our behalf; each is granted only what its job needs (see iam.tf).
data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.apis]
}

locals {
  pubsub_service_agent = "service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  errors_prefix        = "_errors/"
  image_repository     = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}
