# Image for the pipeline scripts; docker-compose.yml picks the script with `command`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY fraud_pipeline/ ./fraud_pipeline/
COPY payment_producer.py fraud_detector.py fraud_processor.py legit_processor.py fraud_rules.py ./

RUN useradd --system --no-create-home --uid 10001 app
USER app

CMD ["python", "fraud_detector.py"]
