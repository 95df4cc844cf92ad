# Deliveries, all in one style: topic -> push subscription (OIDC token of an invoker account that may invoke
# exactly one service) -> Cloud Run. Push subscriptions keep retry and dead-letter policy in Terraform;
# functions-framework turns the push body into a messagePublished CloudEvent.
#   requests       (published by var.request_publishers)   -> leaf-production  start_production
#   output events  (the bucket's OBJECT_FINALIZE notices)  -> leaf-catalogue   catalogue_output
#   reconcile      (Cloud Scheduler, every 5 minutes)      -> leaf-reconcile   reconcile_runs
# Published by the services: tile-ready (an item is complete), run-finished (a run reached a final state).

resource "google_pubsub_topic" "requests" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; requests hold no secrets and CMEK would add a KMS key to operate.
  name                       = var.requests_topic
  message_retention_duration = "604800s"

  depends_on = [time_sleep.apis_ready]
}

resource "google_pubsub_topic" "requests_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; dead letters are copies of requests, which hold no secrets.
  name                       = "${var.requests_topic}-dead-letter"
  message_retention_duration = "604800s"

  depends_on = [time_sleep.apis_ready]
}

resource "google_pubsub_topic" "tile_ready" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; tile-ready events carry only object URLs and ids.
  name                       = var.tile_ready_topic
  message_retention_duration = "604800s"

  depends_on = [time_sleep.apis_ready]
}

resource "google_pubsub_topic" "run_finished" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; run-finished events carry only ids, states and object URLs.
  name                       = var.run_finished_topic
  message_retention_duration = "604800s"

  depends_on = [time_sleep.apis_ready]
}

resource "google_pubsub_topic" "output_events" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; storage notifications carry object names and metadata only.
  name                       = var.output_events_topic
  message_retention_duration = "604800s"

  depends_on = [time_sleep.apis_ready]
}

resource "google_pubsub_topic" "output_events_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; copies of storage notifications, no secrets.
  name                       = "${var.output_events_topic}-dead-letter"
  message_retention_duration = "604800s"

  depends_on = [time_sleep.apis_ready]
}

resource "google_pubsub_topic" "reconcile" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; the scheduled message is an empty JSON object.
  name                       = var.reconcile_topic
  message_retention_duration = "86400s"

  depends_on = [time_sleep.apis_ready]
}

# --- requests -> start_production ---

resource "google_pubsub_subscription" "requests_to_production" {
  name  = "${var.requests_topic}-to-production"
  topic = google_pubsub_topic.requests.id

  # Starting a production only submits Earth Engine exports; 10 minutes is ample and the Pub/Sub maximum.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    # The topic path in the URL lets functions-framework name the topic in the CloudEvent source.
    push_endpoint = "${google_cloud_run_v2_service.production.uri}/${google_pubsub_topic.requests.id}"

    oidc_token {
      service_account_email = google_service_account.requests_invoker.email
      audience              = google_cloud_run_v2_service.production.uri
    }
  }

  # Transient failures (Earth Engine 429/5xx) raise: back off between redeliveries.
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  # Poison messages stop after max_delivery_attempts and are kept on the dead-letter topic.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.requests_dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expire for inactivity
  }

  # The push token is minted by the Pub/Sub agent: its grant must exist before the first delivery.
  depends_on = [google_service_account_iam_member.pubsub_agent_signs_push_tokens]
}

# Without a subscription, messages published to the dead-letter topic would be dropped.
resource "google_pubsub_subscription" "requests_dead_letter" {
  name                       = "${var.requests_topic}-dead-letter"
  topic                      = google_pubsub_topic.requests_dead_letter.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = ""
  }
}

# --- output bucket notifications -> catalogue_output ---

# The bucket announces each finalized object on output_events (JSON payload); the Cloud Storage service agent
# may publish to that one topic only (iam.tf).
resource "google_storage_notification" "outputs_finalized" {
  bucket         = google_storage_bucket.outputs.name
  topic          = google_pubsub_topic.output_events.id
  payload_format = "JSON_API_V1"
  event_types    = ["OBJECT_FINALIZE"]

  depends_on = [google_pubsub_topic_iam_member.gcs_agent_publishes_output_events]
}

resource "google_pubsub_subscription" "output_events_to_catalogue" {
  name  = "${var.output_events_topic}-to-catalogue"
  topic = google_pubsub_topic.output_events.id

  ack_deadline_seconds       = 120
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.catalogue.uri}/${google_pubsub_topic.output_events.id}"

    oidc_token {
      service_account_email = google_service_account.events_invoker.email
      audience              = google_cloud_run_v2_service.catalogue.uri
    }
  }

  # Generation-precondition conflicts are retried by the handler; a redelivery covers the rest.
  retry_policy {
    minimum_backoff = "5s"
    maximum_backoff = "300s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.output_events_dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_service_account_iam_member.pubsub_agent_signs_push_tokens]
}

resource "google_pubsub_subscription" "output_events_dead_letter" {
  name                       = "${var.output_events_topic}-dead-letter"
  topic                      = google_pubsub_topic.output_events_dead_letter.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = ""
  }
}

# --- Cloud Scheduler -> reconcile -> reconcile_runs ---

resource "google_cloud_scheduler_job" "reconcile" {
  name        = "leaf-reconcile"
  region      = var.region
  description = "Tick of the LEAF run reconciler (reconcile_runs): every 5 minutes."
  schedule    = var.reconcile_schedule
  time_zone   = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.reconcile.id
    data       = base64encode("{}")
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_pubsub_subscription" "reconcile_to_reconciler" {
  name  = "${var.reconcile_topic}-to-reconciler"
  topic = google_pubsub_topic.reconcile.id

  ack_deadline_seconds = 300
  # A missed tick is replaced by the next one: keep undelivered ticks for one hour only.
  message_retention_duration = "3600s"

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.reconcile.uri}/${google_pubsub_topic.reconcile.id}"

    oidc_token {
      service_account_email = google_service_account.reconcile_invoker.email
      audience              = google_cloud_run_v2_service.reconcile.uri
    }
  }

  retry_policy {
    minimum_backoff = "30s"
    maximum_backoff = "300s"
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_service_account_iam_member.pubsub_agent_signs_push_tokens]
}
