"""The SMTP channel: one email per message, to the address in a recipient attribute.

The message id goes out as the ``Message-ID`` (and an ``Idempotency-Key`` header) so a
receiving system can recognise a repeat. A 5xx reply fails the message; a 4xx reply, a
refused or dropped connection or a timeout is transient.
"""

from __future__ import annotations

import smtplib
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from campaign_worker.domain.delivery import IDEMPOTENCY_HEADER, Outgoing
from campaign_worker.domain.errors import PermanentDeliveryError, TransientDeliveryError


class SmtpChannel:
    """Sends through one SMTP server (optionally STARTTLS and login)."""

    name = "smtp"
    needs_attributes = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sender: str,
        subject: str,
        timeout: float,
        address_attribute: str = "email",
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
    ) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._sender, self._subject = sender, subject
        self._attribute = address_attribute
        self._login = (username, password) if username and password else None
        self._starttls = starttls

    def address(self, user_id: str, attributes: Mapping[str, Any]) -> str:
        """The recipient's email; a clear permanent failure when there is none."""
        value = attributes.get(self._attribute)
        if not isinstance(value, str) or "@" not in value.strip():
            raise PermanentDeliveryError(
                f"recipient {user_id!r} has no email address in attribute {self._attribute!r}"
            )
        return value.strip()

    def send(self, message: Outgoing) -> str | None:
        email = EmailMessage()
        email["From"] = self._sender
        email["To"] = message.address
        email["Subject"] = self._subject
        email["Message-ID"] = f"<{message.message_id}@campaign-worker>"
        email[IDEMPOTENCY_HEADER] = message.message_id
        email.set_content(message.content)
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as server:
                if self._starttls:
                    server.starttls()
                if self._login is not None:
                    server.login(*self._login)
                server.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            _raise_for(min(codes) if codes else 550, "recipient refused")
        except smtplib.SMTPResponseException as exc:
            _raise_for(exc.smtp_code, "server refused the message")
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(f"smtp unavailable ({type(exc).__name__})") from None
        return str(email["Message-ID"])


def _raise_for(code: int, what: str) -> None:
    reason = f"smtp {what}: {code}"
    if 400 <= code < 500:
        raise TransientDeliveryError(reason)
    raise PermanentDeliveryError(reason)


__all__ = ["SmtpChannel"]
