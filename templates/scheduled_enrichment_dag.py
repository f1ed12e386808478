"""Airflow DAG: describe each day's new images with the vision-enrich Flex Template.

Until the incremental mode exists (a later issue), the input is date-partitioned: every run
describes the Parquet files of its own day, ``gs://BUCKET/refs/dt=YYYY-MM-DD/*.parquet``, and
writes to a folder and BigQuery tables of its own. A rerun of a day overwrites nothing else.

Deploy: copy this file to your Composer environment's dags/ folder and set the Airflow
variables ``vision_enrich_project``, ``vision_enrich_region``, ``vision_enrich_bucket`` and
``vision_enrich_image`` (the image built by templates/build_and_run.sh). The key stays in Secret
Manager (secret ``aimlapi-key``); the workers read it themselves.

The parameter names below are checked against templates/metadata.json by the test suite, which
parses this file without importing Airflow.
"""

import datetime as dt

from airflow import DAG
from airflow.models import Variable
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.sensors.time_delta import TimeDeltaSensor

PROJECT = Variable.get("vision_enrich_project")
REGION = Variable.get("vision_enrich_region", default_var="europe-west1")
BUCKET = Variable.get("vision_enrich_bucket")
IMAGE = Variable.get("vision_enrich_image")

with DAG(
    dag_id="vision_enrich_daily",
    description="Describe the images added each day with a vision chat model",
    schedule="0 3 * * *",  # after the day's partition has landed
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,  # one job at a time keeps the provider's rate budget whole
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=15)},
) as dag:
    describe = DataflowStartFlexTemplateOperator(
        task_id="describe_images",
        project_id=PROJECT,
        location=REGION,
        wait_until_finished=True,
        body={
            "launchParameter": {
                "jobName": "vision-enrich-{{ ds_nodash }}",
                "containerSpecGcsPath": f"gs://{BUCKET}/templates/describe-images.json",
                "parameters": {
                    "input": f"gs://{BUCKET}/refs/dt={{{{ ds }}}}/*.parquet",
                    "output": f"gs://{BUCKET}/described/dt={{{{ ds }}}}",
                    "output_table": f"{PROJECT}:vision_enrich.descriptions",
                    "api_key_secret": f"projects/{PROJECT}/secrets/aimlapi-key/versions/latest",
                    "model": "gpt-4o",
                    "max_concurrency": "16",
                    "requests_per_minute": "600",
                    "budget_split": "20",  # 10 workers x 2 vCPUs (n1-standard-2)
                },
                "environment": {
                    "sdkContainerImage": IMAGE,
                    "maxWorkers": 10,
                    "machineType": "n1-standard-2",
                },
            }
        },
    )


# -- Half price: submit, then collect ---------------------------------------------------------
# The same day's images through the provider's batch API (--mode batch, half the list price).
# The submitting job ends minutes after handing its batches over (--batch_wait=false), so no
# Dataflow worker idles while the provider works; the collecting job, a few hours later, runs the
# *same* parameters: it reads the manifest in --batch_state, submits nothing already submitted,
# collects what has ended and writes the rows. --skip_existing keeps rows a previous collecting
# run appended to BigQuery from being written twice; rows still running are left for a rerun.
def batch_job(task_id: str, run: str) -> DataflowStartFlexTemplateOperator:
    return DataflowStartFlexTemplateOperator(
        task_id=task_id,
        project_id=PROJECT,
        location=REGION,
        wait_until_finished=True,
        body={
            "launchParameter": {
                "jobName": f"vision-enrich-batch-{run}-{{{{ ds_nodash }}}}",
                "containerSpecGcsPath": f"gs://{BUCKET}/templates/describe-images.json",
                "parameters": {
                    "input": f"gs://{BUCKET}/refs/dt={{{{ ds }}}}/*.parquet",
                    "output_table": f"{PROJECT}:vision_enrich.descriptions",
                    "skip_existing": f"{PROJECT}:vision_enrich.descriptions",
                    "api_key_secret": f"projects/{PROJECT}/secrets/aimlapi-key/versions/latest",
                    "model": "gpt-4o",
                    "mode": "batch",
                    "batch_state": f"gs://{BUCKET}/batch-state/dt={{{{ ds }}}}",
                    "batch_wait": "false",
                },
                "environment": {"sdkContainerImage": IMAGE, "maxWorkers": 2},
            }
        },
    )


with DAG(
    dag_id="vision_enrich_daily_half_price",
    description="Describe each day's images through the batch API: submit, then collect",
    schedule="0 3 * * *",
    start_date=dt.datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=15)},
) as half_price_dag:
    # the collecting job waits 3 hours for the provider (most batches end within one); rerun it
    # (or clear the task) if the summary still reports PENDING rows
    submit = batch_job("submit_batches", "submit")
    later = TimeDeltaSensor(
        task_id="wait_for_batches", delta=dt.timedelta(hours=3), mode="reschedule"
    )
    collect = batch_job("collect_batches", "collect")
    submit >> later >> collect
