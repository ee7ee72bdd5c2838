"""The licences model weights come under, and the operator's acceptance of restricted ones.

Every registry entry names its weights' licence. Weights under a non-commercial or
research-only licence are refused (downloaded and loaded) unless the operator accepts that
licence by its id, in the ``CLIPGUARD_ACCEPT_LICENSES`` environment variable (comma-separated,
e.g. ``CLIPGUARD_ACCEPT_LICENSES=cc-by-nc-4.0``) or the ``accept_licenses`` argument that a
settings object passes on. The refusal names the licence, where to read it and the setting.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.errors import ConfigError, LicenseNotAccepted

__all__ = [
    "LICENSES",
    "LICENSE_ENV",
    "License",
    "accepted_licenses",
    "check_license",
    "get_license",
]

LICENSE_ENV = "CLIPGUARD_ACCEPT_LICENSES"


@dataclass(frozen=True)
class License:
    id: str  # lower-case identifier, SPDX where there is one; what an operator writes to accept it
    name: str  # full name
    url: str  # where to read it
    restricted: bool  # non-commercial or research-only: needs the operator's acceptance


LICENSES: dict[str, License] = {
    lic.id: lic
    for lic in [
        License("mit", "MIT License", "https://opensource.org/license/mit", False),
        License(
            "apache-2.0", "Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0", False
        ),
        License(
            "apple-sample-code",
            "Apple Sample Code License",
            "https://huggingface.co/apple/DFN5B-CLIP-ViT-H-14/blob/main/LICENSE",
            False,
        ),
        License(
            "cc-by-nc-4.0",
            "Creative Commons Attribution-NonCommercial 4.0 (non-commercial use only)",
            "https://creativecommons.org/licenses/by-nc/4.0/",
            True,
        ),
    ]
}


def get_license(license_id: str) -> License:
    try:
        return LICENSES[license_id]
    except KeyError:
        raise ConfigError(f"unknown licence {license_id!r}; known: {', '.join(LICENSES)}") from None


def accepted_licenses(extra: Iterable[str] | None = None) -> frozenset[str]:
    """Licence ids the operator accepts: ``$CLIPGUARD_ACCEPT_LICENSES`` plus ``extra``."""
    names = [n for n in os.environ.get(LICENSE_ENV, "").split(",")]
    names += list(extra or ())
    return frozenset(n.strip().lower() for n in names if n.strip())


def check_license(
    model_name: str, license_id: str, *, accept: Iterable[str] | None = None
) -> License:
    """The licence of ``model_name``; raises :class:`LicenseNotAccepted` when it is restricted
    and not accepted by id."""
    lic = get_license(license_id)
    if lic.restricted and lic.id not in accepted_licenses(accept):
        raise LicenseNotAccepted(
            f"{model_name} is released under the {lic.name} ({lic.id}, {lic.url}), which does "
            f"not allow every use; read it, then accept it by setting {LICENSE_ENV}={lic.id} "
            "(comma-separate several) to download or load this model"
        )
    return lic
