"""The WhatsApp channel's own Redis keys, under ``{namespace}:wa:`` (``Keys.for_adapter``):

========================================  ======  ==============================================
key                                       type    meaning
========================================  ======  ==============================================
``wa:window:{channel}:{wa_id}``           string  when the user last wrote (Unix s, Meta's
                                                  timestamp): the 24-hour window's start; it
                                                  expires when the window closes
``wa:pace:{channel}:user:{wa_id}``        string  next free send slot (ms) to one user: the pair
                                                  rate (``gateway.store.pacing``); PX TTL
``wa:pace:{channel}:user:{wa_id}:last``   string  when that user's last send was granted (ms)
``wa:pace:{channel}:number``              string  next free send slot (ms) of the phone number
``wa:pace:{channel}:sends``               list    the number's last sends (µs), as many as a
                                                  second allows (``take_send``); PX TTL
``wa:sent:{channel}:{wamid}``             hash    the delivery record of a message we sent:
                                                  ``delivery`` id, ``conversation``, ``status``
                                                  (accepted, sent, delivered, read, failed),
                                                  ``at``, ``error``; TTL 30 days
``wa:part:{channel}:{delivery}``          string  the wamid Meta gave the reply part with that
                                                  delivery id: a retry of a part already sent
                                                  (its worker killed before the ledger knew)
                                                  returns it instead of sending again; TTL 7 days
========================================  ======  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.keys import AdapterKeys, Keys

__all__ = ["PREFIX", "WhatsAppKeys"]

#: Deployed data lives under it: never change it.
PREFIX = "wa"


@dataclass(frozen=True, slots=True)
class WhatsAppKeys:
    """Builds the WhatsApp channel's keys."""

    keys: AdapterKeys

    @classmethod
    def of(cls, keys: Keys) -> WhatsAppKeys:
        return cls(keys.for_adapter(PREFIX))

    def window(self, channel: str, wa_id: str) -> str:
        return self.keys.key("window", channel, wa_id)

    def user_pace(self, channel: str, wa_id: str) -> str:
        return self.keys.key("pace", channel, "user", wa_id)

    def number_pace(self, channel: str) -> str:
        return self.keys.key("pace", channel, "number")

    def number_sends(self, channel: str) -> str:
        return self.keys.key("pace", channel, "sends")

    def sent(self, channel: str, wamid: str) -> str:
        return self.keys.key("sent", channel, wamid)

    def part(self, channel: str, delivery_id: str) -> str:
        return self.keys.key("part", channel, delivery_id)
