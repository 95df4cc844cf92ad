# Output objects -> catalogue_output: every object finalized in the output bucket is delivered as a
# google.cloud.storage.object.v1.finalized CloudEvent. The handler itself ignores objects that are
# not LEAF outputs (its own _stac/ and _runs/ writes finalize too).
resource "google_eventarc_trigger" "outputs_finalized" {
  name     = "leaf-outputs-finalized"
  location = var.region # a Cloud Storage trigger lives in its bucket's region

  matching_criteria {
    attribute = "type"
    value     = "google.cloud.storage.object.v1.finalized"
  }

  matching_criteria {
    attribute = "bucket"
    value     = google_storage_bucket.outputs.name
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.catalogue.name
      region  = var.region
    }
  }

  service_account = google_service_account.events_invoker.email

  depends_on = [
    google_project_iam_member.gcs_agent_publishes_events,
    google_project_iam_member.events_invoker_receives_events,
    google_cloud_run_v2_service_iam_member.events_invoke_catalogue,
  ]
}
