"""Guards at the boundary: what comes from outside is made safe here.

Other rooms use:
- ``sanitize``: text, numbers and the key made safe where rows and log lines are made.
- ``secrets``: where the API key comes from (an environment variable or Secret Manager).
- ``deadline``: reading an HTTP body against a wall-clock deadline.
- ``content_coding``: ``Content-Encoding`` decoders with bounded output.
- ``netguard``: image fetches kept off private networks.
- ``tls``: the CA bundle the environment names, and a failed handshake in one line.
"""

__all__ = ["content_coding", "deadline", "netguard", "sanitize", "secrets", "tls"]
