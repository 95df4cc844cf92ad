# Requests: topic -> push subscription (OIDC) -> start_production, with backoff and a dead-letter topic.
# A push subscription (rather than an Eventarc trigger) keeps the retry and dead-letter policy in Terraform;
# functions-framework turns the Pub/Sub push body into a messagePublished CloudEvent.

resource "google_pubsub_topic" "requests" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; requests hold no secrets and CMEK would add a KMS key to operate.
  name                       = var.requests_topic
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "requests_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; dead letters are copies of requests, which hold no secrets.
  name                       = "${var.requests_topic}-dead-letter"
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "tile_ready" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; tile-ready events carry only object URLs and ids.
  name                       = var.tile_ready_topic
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

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
