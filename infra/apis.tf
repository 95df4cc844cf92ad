# Every API the deployment calls, enabled first. Each resource below depends on time_sleep.apis_ready rather
# than on the APIs directly: a freshly enabled API (and the service agent it creates) takes a minute or two
# to be usable everywhere, and a resource created sooner fails with "API not enabled" or "agent not found".
resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudresourcemanager.googleapis.com", # every google_project_iam_member reads and writes the project policy
    "cloudscheduler.googleapis.com",       # the reconciler's schedule
    "earthengine.googleapis.com",
    "iam.googleapis.com", # service accounts and their IAM policies
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ])

  project = var.project_id
  service = each.value
  # Other workloads in the project may use these APIs: never switch them off on destroy.
  disable_on_destroy = false
}

resource "time_sleep" "apis_ready" {
  create_duration = var.api_propagation_wait

  # A new API set (a service added to the list) waits again.
  triggers = {
    apis = join(",", sort([for s in google_project_service.apis : s.service]))
  }
}
