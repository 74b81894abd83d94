"""The default basket rules as plain values, importable without pydantic.

``settings.BasketConfig`` (validated, settable from the environment) takes its defaults from
``BasketRules``; `prodassoc rules` applies ``BasketRules()`` directly, because importing pydantic
and building the settings models costs about as much start-up as polars does.
"""

from __future__ import annotations

from dataclasses import dataclass

# Online Retail's non-product stock codes (postage, fees, manual adjustments, ...).
DEFAULT_NON_PRODUCT_CODES = (
    "POST", "DOT", "M", "m", "C2", "C3", "D", "S", "B", "CRUK", "PADS", "BANK CHARGES",
    "AMAZONFEE", "ADJUST", "ADJUST2", "TEST001", "TEST002",
)
# Codes matching this are not products either (gift vouchers, DCGS carriage lines, ...).
DEFAULT_NON_PRODUCT_PATTERN = r"(?i)^(gift_\d+_\d+|DCGS.*|SP1002)$"


@dataclass(frozen=True)
class BasketRules:
    """What ``data.baskets`` reads of a ``BasketConfig``, with its defaults (see data/baskets.py for the rules)."""

    # off: an order id prefix means nothing unless the retailer says so. Online Retail's cancellations
    # (C536379) hold only negative lines, which the returns rule drops (all 9,288 lines in 2010-2011)
    drop_cancellations: bool = False
    cancellation_prefix: str = "C"
    non_product_codes: tuple[str, ...] = DEFAULT_NON_PRODUCT_CODES
    non_product_pattern: str | None = DEFAULT_NON_PRODUCT_PATTERN
    require_positive_price: bool = True
