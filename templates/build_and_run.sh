#!/usr/bin/env bash
# Build the Flex Template image and spec, then launch a job. See templates/README.md.
# Set PROJECT, REGION and BUCKET first; AIMLAPI_API_KEY only for the one-time secret creation.
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
IMAGE=${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/vision-enrich/describe-images:0.1.0}

# once: a Docker repository, and the key in Secret Manager
gcloud artifacts repositories describe vision-enrich --location=$REGION --project=$PROJECT >/dev/null 2>&1 || \
  gcloud artifacts repositories create vision-enrich --repository-format=docker --location=$REGION --project=$PROJECT
gcloud secrets describe aimlapi-key --project=$PROJECT >/dev/null 2>&1 || \
  printf %s "${AIMLAPI_API_KEY:?set AIMLAPI_API_KEY once, to create the secret}" | gcloud secrets create aimlapi-key --data-file=- --project=$PROJECT
gcloud secrets add-iam-policy-binding aimlapi-key --project=$PROJECT \
  --member=serviceAccount:$(gcloud projects describe $PROJECT --format='value(projectNumber)')-compute@developer.gserviceaccount.com \
  --role=roles/secretmanager.secretAccessor

# build the image (from the repository root) and the template spec
cat > /tmp/vision-enrich-cloudbuild.yaml <<YAML
steps:
- name: gcr.io/cloud-builders/docker
  args: [build, -f, templates/Dockerfile, -t, $IMAGE, .]
images: [$IMAGE]
YAML
gcloud builds submit --project=$PROJECT --config=/tmp/vision-enrich-cloudbuild.yaml .
gcloud dataflow flex-template build gs://$BUCKET/templates/describe-images.json \
  --image=$IMAGE --sdk-language=PYTHON --metadata-file=templates/metadata.json

# launch
gcloud dataflow flex-template run "describe-images-$(date +%Y%m%d-%H%M%S)" \
  --project=$PROJECT --region=$REGION \
  --template-file-gcs-location=gs://$BUCKET/templates/describe-images.json \
  --parameters=input=gs://$BUCKET/refs/*.parquet,output=gs://$BUCKET/described \
  --parameters=api_key_secret=projects/$PROJECT/secrets/aimlapi-key/versions/latest \
  --parameters=model=gpt-4o,max_concurrency=16,requests_per_minute=600,budget_split=10 \
  --parameters=sdk_container_image=$IMAGE,max_num_workers=10
