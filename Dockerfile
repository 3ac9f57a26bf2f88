FROM python:3.11-slim
WORKDIR /srv/checkout
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY app ./app
COPY config ./config
COPY workers ./workers
COPY contracts ./contracts
RUN useradd --create-home checkout
USER checkout
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "app", "--help"]
