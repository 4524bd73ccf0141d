"""Forward every refused credential to a webhook (docs/observability.rst).

The receiver runs inside the request, so it only queues the event; a thread posts it. The
event holds the reason code, the key's prefix and hint and the client's address: never the key.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.request
from typing import Any

from flask import Flask

from flask_apikeys.signals import credential_refused


def forward_refusals(app: Flask, webhook_url: str) -> queue.Queue[dict[str, Any]]:
    """Post each of ``app``'s refused credentials to ``webhook_url`` as JSON, off the request."""
    pending: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=10_000)

    def on_refused(sender: Flask, **event: Any) -> None:
        try:
            pending.put_nowait(event)
        except queue.Full:
            pass  # a flood of refusals must not slow the requests down

    def post_forever() -> None:
        while True:
            event = pending.get()
            body = json.dumps(event).encode()
            post = urllib.request.Request(  # noqa: S310 - the URL the app configured
                webhook_url, body, {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(post, timeout=5):  # noqa: S310 - a configured URL
                    pass
            except OSError:
                app.logger.warning("could not forward a refused credential to the webhook")
            finally:
                pending.task_done()

    credential_refused.connect(on_refused, app, weak=False)
    threading.Thread(target=post_forever, name="refusal-webhook", daemon=True).start()
    return pending
