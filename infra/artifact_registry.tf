resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption; the image holds public code and no secrets.
  location      = var.region
  repository_id = var.artifact_repository
  format        = "DOCKER"
  description   = "LEAF service image, tagged by git commit."

  # A commit tag always names the same image: what runs can be traced to its source.
  docker_config {
    immutable_tags = true
  }

  depends_on = [time_sleep.apis_ready]
}
