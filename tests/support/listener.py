"""A TCP port on 127.0.0.1 that records what reaches it: proof that no credential was sent somewhere."""

from __future__ import annotations

import socket
import threading


class Listener:
    """A TCP port on 127.0.0.1 that records every connection and every byte sent to it."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with client:
                client.settimeout(2)
                data = b""
                try:
                    while chunk := client.recv(65536):
                        data += chunk
                        if b"\r\n\r\n" in data:
                            break
                except OSError:
                    pass
                self.received.append(data)

    def close(self):
        self.server.close()
