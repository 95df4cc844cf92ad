output "production_service_uri" {
  description = "URL of the start_production service (internal ingress)."
  value       = google_cloud_run_v2_service.production.uri
}

output "catalogue_service_uri" {
  description = "URL of the catalogue_output service (internal ingress)."
  value       = google_cloud_run_v2_service.catalogue.uri
}

output "reconcile_service_uri" {
  description = "URL of the reconcile_runs service (internal ingress)."
  value       = google_cloud_run_v2_service.reconcile.uri
}

output "run_finished_topic" {
  description = "Subscribe here to learn when a run reaches its final state."
  value       = google_pubsub_topic.run_finished.id
}

output "requests_topic" {
  description = "Publish production dictionaries here."
  value       = google_pubsub_topic.requests.id
}

output "requests_dead_letter_subscription" {
  description = "Pull from here to inspect requests that failed max_delivery_attempts times."
  value       = google_pubsub_subscription.requests_dead_letter.id
}

output "tile_ready_topic" {
  description = "Subscribe here to chain jobs on complete tiles."
  value       = google_pubsub_topic.tile_ready.id
}

output "bucket" {
  description = "Output bucket name: requests must name it as GCS_bucket."
  value       = google_storage_bucket.outputs.name
}

output "image_repository" {
  description = "Artifact Registry path of the LEAF image (tagged by commit)."
  value       = local.image_repository
}

output "service_accounts" {
  description = "Service accounts by job."
  value = {
    production       = google_service_account.production.email
    catalogue        = google_service_account.catalogue.email
    requests_invoker = google_service_account.requests_invoker.email
    events_invoker   = google_service_account.events_invoker.email
    reconcile        = google_service_account.reconcile.email
    reconcile_push   = google_service_account.reconcile_invoker.email
    build            = google_service_account.build.email
  }
}

output "build_command" {
  description = "The Cloud Build command for this deployment (run from a clean checkout's root): it builds the committed tree of HEAD, never the working tree."
  value = join(" ", [
    "git archive --format=tar.gz -o /tmp/leaf-source.tgz HEAD &&",
    "gcloud builds submit /tmp/leaf-source.tgz --project=${var.project_id} --region=${var.region} --config=cloudbuild.yaml",
    "--service-account=${google_service_account.build.id}",
    "--gcs-source-staging-dir=${google_storage_bucket.build_source.url}/source",
    "--substitutions=COMMIT_SHA=$(git rev-parse HEAD),_REGION=${var.region},_REPOSITORY=${var.artifact_repository},_TOPICS=${join(":", [var.requests_topic, var.tile_ready_topic, var.run_finished_topic, var.reconcile_topic])}",
  ])
}
