variable "project_id" {
  description = "Google Cloud project that hosts LEAF (Earth Engine must be enabled for it)."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run services, the Eventarc trigger, the bucket and the image repository."
  type        = string
  default     = "northamerica-northeast1"
}

variable "bucket_name" {
  description = "Output bucket: tile GeoTIFFs, run records, STAC manifests and error records."
  type        = string
}

variable "requests_topic" {
  description = "Pub/Sub topic that receives production dictionaries."
  type        = string
  default     = "leaf-requests"
}

variable "tile_ready_topic" {
  description = "Pub/Sub topic on which the catalogue announces complete tiles."
  type        = string
  default     = "leaf-tile-ready"
}

variable "artifact_repository" {
  description = "Artifact Registry Docker repository that holds the LEAF image."
  type        = string
  default     = "leaf"
}

variable "image" {
  description = "Image for the first deployment. Cloud Build replaces it with the commit-tagged LEAF image; Terraform then leaves it alone."
  type        = string
  default     = "us-docker.pkg.dev/cloudrun/container/hello"
}

variable "max_delivery_attempts" {
  description = "Deliveries of one request message before it goes to the dead-letter topic (5..100)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub accepts 5 to 100 delivery attempts."
  }
}

variable "error_record_retention_days" {
  description = "Days an error record (_errors/ and {out_folder}/_errors/ of var.out_folders) is kept."
  type        = number
  default     = 30
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or deleted object version is kept (versioning protects outputs and manifests)."
  type        = number
  default     = 30
}

variable "soft_delete_retention_days" {
  description = "Soft-delete window of the output bucket, in days (7..90)."
  type        = number
  default     = 7
}

variable "max_instances" {
  description = "Upper bound of Cloud Run instances per service."
  type        = number
  default     = 10
}

variable "run_finished_topic" {
  description = "Pub/Sub topic on which the services announce a run's final state (LEAF_RUN_FINISHED_TOPIC)."
  type        = string
  default     = "run-finished"
}

variable "output_events_topic" {
  description = "Pub/Sub topic that receives the output bucket's OBJECT_FINALIZE notifications (for the catalogue)."
  type        = string
  default     = "leaf-output-events"
}

variable "reconcile_topic" {
  description = "Pub/Sub topic that Cloud Scheduler publishes the reconciler's tick to."
  type        = string
  default     = "reconcile"
}

variable "reconcile_schedule" {
  description = "Cron schedule (UTC) of the reconciler's tick."
  type        = string
  default     = "*/5 * * * *"
}

variable "max_tasks_in_flight" {
  description = "LEAF_MAX_TASKS_IN_FLIGHT: Earth Engine exports running at once; more wait in the run records' queue."
  type        = number
  default     = 1000
}

variable "max_eecu_hours" {
  description = "LEAF_MAX_EECU_HOURS: the estimated Earth Engine compute (EECU-hours) above which a request is refused."
  type        = number
  default     = 100
}

variable "request_publishers" {
  description = "Members allowed to publish requests (e.g. \"user:ana@example.org\", \"group:leaf@example.org\"). Authoritative for the publisher role on the requests topic; empty: only project owners/editors."
  type        = list(string)
  default     = []
}

variable "allowed_outputs" {
  description = "LEAF_ALLOWED_OUTPUTS of start_production: \"bucket\" or \"bucket/prefix\" entries a request may write to. Empty: the output bucket."
  type        = list(string)
  default     = []
}

variable "out_folders" {
  description = "out_folder values that requests use; their {out_folder}/_errors/ records expire after error_record_retention_days (GCS lifecycle rules match literal prefixes only)."
  type        = list(string)
  default     = []
}

variable "deletion_protection" {
  description = "Cloud Run deletion protection. Set false (and apply) before `terraform destroy` or a change that replaces a service."
  type        = bool
  default     = true
}

variable "force_destroy_outputs" {
  description = "Let `terraform destroy` delete the output bucket with its objects (set true, apply, then destroy)."
  type        = bool
  default     = false
}

variable "api_propagation_wait" {
  description = "Pause after enabling the APIs, before the first resource that uses them (new projects need about a minute)."
  type        = string
  default     = "90s"
}
