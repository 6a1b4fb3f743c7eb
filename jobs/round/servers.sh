# Sourced by the README's round: an S3 server (moto) and a Label Studio on 127.0.0.1, both
# stopped when the sourcing shell exits. With a real bucket and Label Studio, skip this and set
# AWS credentials and LABEL_STUDIO_API_KEY yourself.
export AWS_ACCESS_KEY_ID=round AWS_SECRET_ACCESS_KEY=round AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:9123
export LABEL_STUDIO_API_KEY=$(.venv/bin/python -c 'import uuid; print(uuid.uuid4().hex)')
round_data=$(mktemp -d)
.venv/bin/moto_server -H 127.0.0.1 -p 9123 > "$round_data/s3.log" 2>&1 &
round_s3=$!
LABEL_STUDIO_BASE_DATA_DIR="$round_data/ls" LABEL_STUDIO_COLLECT_ANALYTICS=false \
LABEL_STUDIO_LATEST_VERSION_CHECK=false LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
  setsid .venv-label-studio/bin/label-studio start --no-browser --internal-host 127.0.0.1 \
  --port 8089 --data-dir "$round_data/ls" --username admin@example.com \
  --password "$LABEL_STUDIO_API_KEY" --user-token "$LABEL_STUDIO_API_KEY" \
  > "$round_data/label-studio.log" 2>&1 &
round_ls=$!
trap 'kill $round_s3; kill -- -$round_ls; rm -rf "$round_data"' EXIT
# A fresh Label Studio migrates its database first: a minute or two.
.venv/bin/python - <<'PY'
import json, sys, time, urllib.request
deadline = time.monotonic() + 300
for url in ("http://127.0.0.1:9123/moto-api/", "http://127.0.0.1:8089/health"):
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{url} did not answer within 5 minutes")
            time.sleep(0.5)
print("S3 on http://127.0.0.1:9123, Label Studio on http://127.0.0.1:8089")
PY
