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
  description = "Days an error record under _errors/ is kept."
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
