# Least privilege: one service account per job, each role granted on the single resource it is for.
# Project-level grants are only those that have no narrower scope (Earth Engine, Service Usage,
# Eventarc event receiving, log writing).

# --- runtime identities of the two services ---

resource "google_service_account" "production" {
  account_id   = "leaf-production"
  display_name = "LEAF start_production (Earth Engine exports)"
}

resource "google_service_account" "catalogue" {
  account_id   = "leaf-catalogue"
  display_name = "LEAF catalogue_output (STAC, tile-ready events)"
}

# Earth Engine: exports need the Resource Writer role; calling the API bills the project (serviceUsageConsumer).
resource "google_project_iam_member" "production_earth_engine" {
  for_each = toset(["roles/earthengine.writer", "roles/serviceusage.serviceUsageConsumer"])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.production.email}"
}

# Earth Engine exports land in the bucket as this account; it also writes run and error records.
resource "google_storage_bucket_iam_member" "production_objects" {
  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.production.email}"
}

# The catalogue reads outputs and rewrites STAC items under generation preconditions.
resource "google_storage_bucket_iam_member" "catalogue_objects" {
  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.catalogue.email}"
}

resource "google_pubsub_topic_iam_member" "catalogue_publishes_tile_ready" {
  topic  = google_pubsub_topic.tile_ready.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.catalogue.email}"
}

# --- identities that deliver events: each may invoke exactly one service ---

resource "google_service_account" "requests_invoker" {
  account_id   = "leaf-requests-push"
  display_name = "LEAF requests push subscription -> leaf-production"
}

resource "google_cloud_run_v2_service_iam_member" "requests_invoke_production" {
  name     = google_cloud_run_v2_service.production.name
  location = google_cloud_run_v2_service.production.location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.requests_invoker.email}"
}

resource "google_service_account" "events_invoker" {
  account_id   = "leaf-output-events"
  display_name = "LEAF Eventarc output-finalized trigger -> leaf-catalogue"
}

resource "google_cloud_run_v2_service_iam_member" "events_invoke_catalogue" {
  name     = google_cloud_run_v2_service.catalogue.name
  location = google_cloud_run_v2_service.catalogue.location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.events_invoker.email}"
}

# Eventarc requires its trigger's service account to hold eventReceiver on the project.
resource "google_project_iam_member" "events_invoker_receives_events" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.events_invoker.email}"
}

# --- Google-managed service agents ---

# Pub/Sub mints the push subscription's OIDC token as requests_invoker (needed on projects made before 2021-04).
resource "google_service_account_iam_member" "pubsub_agent_signs_push_tokens" {
  service_account_id = google_service_account.requests_invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${local.pubsub_service_agent}"
}

# Dead-lettering: Pub/Sub forwards from the subscription to the dead-letter topic as its service agent.
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  topic  = google_pubsub_topic.requests_dead_letter.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${local.pubsub_service_agent}"
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_dead_letters" {
  subscription = google_pubsub_subscription.requests_to_production.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${local.pubsub_service_agent}"
}

# Eventarc Cloud Storage triggers: the Cloud Storage service agent publishes into the Pub/Sub topic
# that Eventarc creates and names itself, so the grant cannot be narrowed to a topic we know.
resource "google_project_iam_member" "gcs_agent_publishes_events" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# --- Cloud Build: push the image, roll it out to the two services, nothing else ---

resource "google_service_account" "build" {
  account_id   = "leaf-build"
  display_name = "LEAF Cloud Build (test, build, push, deploy)"
}

resource "google_project_iam_member" "build_writes_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.build.email}"
}

resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.build_source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.build.email}"
}

resource "google_artifact_registry_repository_iam_member" "build_pushes_images" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

resource "google_cloud_run_v2_service_iam_member" "build_deploys" {
  for_each = {
    production = google_cloud_run_v2_service.production
    catalogue  = google_cloud_run_v2_service.catalogue
  }

  name     = each.value.name
  location = each.value.location
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.build.email}"
}

# Deploying a revision that runs as a service account requires actAs on that account.
resource "google_service_account_iam_member" "build_acts_as_runtime" {
  for_each = {
    production = google_service_account.production.name
    catalogue  = google_service_account.catalogue.name
  }

  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.build.email}"
}

# The build's preflight step checks that the topics it deploys against exist.
resource "google_pubsub_topic_iam_member" "build_views_topics" {
  for_each = {
    requests   = google_pubsub_topic.requests.id
    tile_ready = google_pubsub_topic.tile_ready.id
  }

  topic  = each.value
  role   = "roles/pubsub.viewer"
  member = "serviceAccount:${google_service_account.build.email}"
}
