FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY worker worker
COPY lua lua
COPY migrations migrations
RUN pip install --no-cache-dir .
# lua/ and migrations/ are read from beside the engine package: run from the source tree.
ENV HOST=0.0.0.0 PORT=8000 PYTHONPATH=/app
EXPOSE 8000
CMD ["python", "-m", "engine", "serve"]
