# Least privilege: one service account per job, each role granted on the single resource it is for.
# Project-level grants are only those that have no narrower scope (Earth Engine, Service Usage, log writing).
# Every account and grant waits for time_sleep.apis_ready (IAM, Resource Manager and Pub/Sub APIs usable).

locals {
  # Object paths the catalogue and the reconciler own: STAC manifests, run records and error records, at any
  # depth ({out_folder}/_stac/..., {out_folder}/_runs/..., {out_folder}/_errors/...). Outside them they may
  # create objects but never replace or delete one: the tiles are not theirs to touch.
  record_paths_condition = join(" || ", [
    for dir in ["_stac", "_runs", "_errors"] : "resource.name.extract(\"/${dir}/{name}\") != \"\""
  ])
  runtime_accounts = {
    production = google_service_account.production
    catalogue  = google_service_account.catalogue
    reconcile  = google_service_account.reconcile
  }
  # Push subscriptions: each delivers with an OIDC token of its own invoker account (pubsub.tf).
  push_invokers = {
    requests  = google_service_account.requests_invoker
    outputs   = google_service_account.events_invoker
    reconcile = google_service_account.reconcile_invoker
  }
}

# --- runtime identities of the three services ---

resource "google_service_account" "production" {
  account_id   = "leaf-production"
  display_name = "LEAF start_production (Earth Engine exports)"

  depends_on = [time_sleep.apis_ready]
}

resource "google_service_account" "catalogue" {
  account_id   = "leaf-catalogue"
  display_name = "LEAF catalogue_output (STAC, tile-ready events)"

  depends_on = [time_sleep.apis_ready]
}

resource "google_service_account" "reconcile" {
  account_id   = "leaf-reconcile"
  display_name = "LEAF reconcile_runs (Earth Engine task states, run records)"

  depends_on = [time_sleep.apis_ready]
}

# Earth Engine: starting, listing and cancelling exports need the Resource Writer role; calling the API bills
# the project (serviceUsageConsumer). The reconciler lists and cancels operations and starts queued exports.
resource "google_project_iam_member" "earth_engine" {
  for_each = {
    for pair in setproduct(["production", "reconcile"], ["roles/earthengine.writer", "roles/serviceusage.serviceUsageConsumer"]) :
    "${pair[0]} ${pair[1]}" => { account = pair[0], role = pair[1] }
  }

  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${local.runtime_accounts[each.value.account].email}"
}

# Earth Engine exports land in the bucket as this account; it also writes run and error records and, for
# rerun=overwrite, replaces earlier outputs: object admin on the output bucket.
resource "google_storage_bucket_iam_member" "production_objects" {
  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.production.email}"
}

# The catalogue and the reconciler read everything (tiles to check, records), create objects, and replace or
# delete only under the record paths; replacing an object needs delete permission on it, hence the condition.
resource "google_storage_bucket_iam_member" "records_read" {
  for_each = { catalogue = google_service_account.catalogue.email, reconcile = google_service_account.reconcile.email }

  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${each.value}"
}

resource "google_storage_bucket_iam_member" "records_create" {
  for_each = { catalogue = google_service_account.catalogue.email, reconcile = google_service_account.reconcile.email }

  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${each.value}"
}

resource "google_storage_bucket_iam_member" "records_replace" {
  for_each = { catalogue = google_service_account.catalogue.email, reconcile = google_service_account.reconcile.email }

  bucket = google_storage_bucket.outputs.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${each.value}"

  condition {
    title       = "leaf-record-paths"
    description = "Only STAC manifests, run records and error records (_stac/, _runs/, _errors/ at any depth)."
    expression  = local.record_paths_condition
  }
}

resource "google_pubsub_topic_iam_member" "catalogue_publishes_tile_ready" {
  topic  = google_pubsub_topic.tile_ready.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.catalogue.email}"
}

# Whoever brings a run to its final state announces it (LEAF_RUN_FINISHED_TOPIC).
resource "google_pubsub_topic_iam_member" "services_publish_run_finished" {
  for_each = local.runtime_accounts

  topic  = google_pubsub_topic.run_finished.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${each.value.email}"
}

# Who may submit production requests: exactly var.request_publishers (authoritative for this role and topic).
resource "google_pubsub_topic_iam_binding" "request_publishers" {
  count = length(var.request_publishers) > 0 ? 1 : 0

  topic   = google_pubsub_topic.requests.id
  role    = "roles/pubsub.publisher"
  members = var.request_publishers
}

# --- identities that deliver events: each may invoke exactly one service ---

resource "google_service_account" "requests_invoker" {
  account_id   = "leaf-requests-push"
  display_name = "LEAF requests push subscription -> leaf-production"

  depends_on = [time_sleep.apis_ready]
}

resource "google_cloud_run_v2_service_iam_member" "requests_invoke_production" {
  name     = google_cloud_run_v2_service.production.name
  location = google_cloud_run_v2_service.production.location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.requests_invoker.email}"
}

resource "google_service_account" "events_invoker" {
  account_id   = "leaf-output-events"
  display_name = "LEAF output-events push subscription -> leaf-catalogue"

  depends_on = [time_sleep.apis_ready]
}

resource "google_cloud_run_v2_service_iam_member" "events_invoke_catalogue" {
  name     = google_cloud_run_v2_service.catalogue.name
  location = google_cloud_run_v2_service.catalogue.location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.events_invoker.email}"
}

resource "google_service_account" "reconcile_invoker" {
  account_id   = "leaf-reconcile-push"
  display_name = "LEAF reconcile push subscription -> leaf-reconcile"

  depends_on = [time_sleep.apis_ready]
}

resource "google_cloud_run_v2_service_iam_member" "reconcile_invoke_reconciler" {
  name     = google_cloud_run_v2_service.reconcile.name
  location = google_cloud_run_v2_service.reconcile.location
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.reconcile_invoker.email}"
}

# --- Google-managed service agents ---

# Pub/Sub mints each push subscription's OIDC token as that subscription's invoker account.
resource "google_service_account_iam_member" "pubsub_agent_signs_push_tokens" {
  for_each = local.push_invokers

  service_account_id = each.value.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${local.pubsub_service_agent}"

  # The Pub/Sub agent exists once the project has its first Pub/Sub resource.
  depends_on = [google_pubsub_topic.requests]
}

# Dead-lettering: Pub/Sub forwards from a subscription to its dead-letter topic as its service agent.
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  for_each = {
    requests = google_pubsub_topic.requests_dead_letter.id
    outputs  = google_pubsub_topic.output_events_dead_letter.id
  }

  topic  = each.value
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${local.pubsub_service_agent}"
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_dead_letters" {
  for_each = {
    requests = google_pubsub_subscription.requests_to_production.id
    outputs  = google_pubsub_subscription.output_events_to_catalogue.id
  }

  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${local.pubsub_service_agent}"
}

# The bucket's notifications are published by the Cloud Storage service agent: to output_events only.
resource "google_pubsub_topic_iam_member" "gcs_agent_publishes_output_events" {
  topic  = google_pubsub_topic.output_events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# --- Cloud Build: push the image, roll it out to the three services, nothing else ---

resource "google_service_account" "build" {
  account_id   = "leaf-build"
  display_name = "LEAF Cloud Build (test, build, push, deploy)"

  depends_on = [time_sleep.apis_ready]
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

# writer: push new tags; reader is included (the preflight step looks up whether the commit's tag exists).
resource "google_artifact_registry_repository_iam_member" "build_pushes_images" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

resource "google_cloud_run_v2_service_iam_member" "build_deploys" {
  for_each = local.services

  name     = each.value.name
  location = each.value.location
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.build.email}"
}

# Deploying a revision that runs as a service account requires actAs on that account.
resource "google_service_account_iam_member" "build_acts_as_runtime" {
  for_each = local.runtime_accounts

  service_account_id = each.value.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.build.email}"
}

# The build's preflight step checks that the topics the services use exist.
resource "google_pubsub_topic_iam_member" "build_views_topics" {
  for_each = {
    requests     = google_pubsub_topic.requests.id
    tile_ready   = google_pubsub_topic.tile_ready.id
    run_finished = google_pubsub_topic.run_finished.id
    reconcile    = google_pubsub_topic.reconcile.id
  }

  topic  = each.value
  role   = "roles/pubsub.viewer"
  member = "serviceAccount:${google_service_account.build.email}"
}
