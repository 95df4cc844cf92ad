# Two Cloud Run services from the one LEAF image; FUNCTION_TARGET picks the CloudEvent entrypoint.
# Internal ingress: only Pub/Sub push and Eventarc (same project) reach them, and both must present
# an OIDC token of a service account that holds run.invoker on that one service (iam.tf).

locals {
  service_env = {
    GOOGLE_CLOUD_PROJECT  = var.project_id
    LEAF_TILE_READY_TOPIC = google_pubsub_topic.tile_ready.id
    LEAF_ERRORS_URI       = "gs://${google_storage_bucket.outputs.name}/${trimsuffix(local.errors_prefix, "/")}"
    LEAF_BACKEND          = "gee"
  }
}

resource "google_cloud_run_v2_service" "production" {
  name     = "leaf-production"
  location = var.region
  ingress  = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account                  = google_service_account.production.email
    timeout                          = "540s"
    max_instance_request_concurrency = 4

    scaling {
      max_instance_count = var.max_instances
    }

    containers {
      image = var.image

      env {
        name  = "FUNCTION_TARGET"
        value = "start_production"
      }

      dynamic "env" {
        for_each = local.service_env
        content {
          name  = env.key
          value = env.value
        }
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
        startup_cpu_boost = true
      }
    }
  }

  # Cloud Build deploys each commit's image; Terraform owns everything else about the service.
  lifecycle {
    ignore_changes = [template[0].containers[0].image, client, client_version]
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_run_v2_service" "catalogue" {
  name     = "leaf-catalogue"
  location = var.region
  ingress  = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account                  = google_service_account.catalogue.email
    timeout                          = "120s"
    max_instance_request_concurrency = 16

    scaling {
      max_instance_count = var.max_instances
    }

    containers {
      image = var.image

      env {
        name  = "FUNCTION_TARGET"
        value = "catalogue_output"
      }

      dynamic "env" {
        for_each = local.service_env
        content {
          name  = env.key
          value = env.value
        }
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
        startup_cpu_boost = true
      }
    }
  }

  lifecycle {
    ignore_changes = [template[0].containers[0].image, client, client_version]
  }

  depends_on = [google_project_service.apis]
}
