output "production_service_uri" {
  description = "URL of the start_production service (internal ingress)."
  value       = google_cloud_run_v2_service.production.uri
}

output "catalogue_service_uri" {
  description = "URL of the catalogue_output service (internal ingress)."
  value       = google_cloud_run_v2_service.catalogue.uri
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
  description = "Output bucket."
  value       = google_storage_bucket.outputs.url
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
    build            = google_service_account.build.email
  }
}

output "build_command" {
  description = "The Cloud Build command for this deployment (run from the repository root)."
  value = join(" ", [
    "gcloud builds submit --project=${var.project_id} --region=${var.region} --config=cloudbuild.yaml",
    "--service-account=${google_service_account.build.id}",
    "--gcs-source-staging-dir=${google_storage_bucket.build_source.url}/source",
    "--substitutions=COMMIT_SHA=$(git rev-parse HEAD),_REGION=${var.region},_BUCKET=${google_storage_bucket.outputs.name},_REQUESTS_TOPIC=${var.requests_topic},_TILE_READY_TOPIC=${var.tile_ready_topic},_REPOSITORY=${var.artifact_repository}",
  ])
}
