# Three Cloud Run services from the one LEAF image; FUNCTION_TARGET picks the CloudEvent entry point.
# Internal ingress: only Pub/Sub push (same project) reaches them, with an OIDC token of a service account
# that holds run.invoker on that one service (iam.tf). Terraform owns their environment; Cloud Build only
# replaces the image.

locals {
  service_env = {
    GOOGLE_CLOUD_PROJECT     = var.project_id
    LEAF_TILE_READY_TOPIC    = google_pubsub_topic.tile_ready.id
    LEAF_RUN_FINISHED_TOPIC  = google_pubsub_topic.run_finished.id
    LEAF_ERRORS_URI          = "gs://${google_storage_bucket.outputs.name}/${trimsuffix(local.errors_prefix, "/")}"
    LEAF_BACKEND             = "gee"
    LEAF_MAX_TASKS_IN_FLIGHT = tostring(var.max_tasks_in_flight)
    LEAF_MAX_EECU_HOURS      = tostring(var.max_eecu_hours)
  }
  # Only start_production admits requests: it alone is told where outputs may go.
  production_env = merge(local.service_env, {
    LEAF_ALLOWED_OUTPUTS = join(",", coalescelist(var.allowed_outputs, [google_storage_bucket.outputs.name]))
  })
  services = {
    production = google_cloud_run_v2_service.production
    catalogue  = google_cloud_run_v2_service.catalogue
    reconcile  = google_cloud_run_v2_service.reconcile
  }
}

resource "google_cloud_run_v2_service" "production" {
  name                = "leaf-production"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection

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
        for_each = local.production_env
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

  depends_on = [time_sleep.apis_ready]
}

resource "google_cloud_run_v2_service" "catalogue" {
  name                = "leaf-catalogue"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection

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

  # Cloud Build deploys each commit's image; Terraform owns everything else about the service.
  lifecycle {
    ignore_changes = [template[0].containers[0].image, client, client_version]
  }

  depends_on = [time_sleep.apis_ready]
}

# One reconciler at a time is enough for a 5-minute tick and keeps its sweeps from overlapping.
resource "google_cloud_run_v2_service" "reconcile" {
  name                = "leaf-reconcile"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.reconcile.email
    timeout                          = "300s"
    max_instance_request_concurrency = 1

    scaling {
      max_instance_count = 1
    }

    containers {
      image = var.image

      env {
        name  = "FUNCTION_TARGET"
        value = "reconcile_runs"
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

  # Cloud Build deploys each commit's image; Terraform owns everything else about the service.
  lifecycle {
    ignore_changes = [template[0].containers[0].image, client, client_version]
  }

  depends_on = [time_sleep.apis_ready]
}
