"""
recbole_hyena.data.utils
########################

``create_dataset`` and ``data_preparation`` as RecBole's, with a clear error for missing data.
"""

from __future__ import annotations

import os
import socket

from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation as recbole_data_preparation

# A download attempt on a machine without internet must fail, not hang.
_DOWNLOAD_TIMEOUT_S = 60


def _missing_data_error(config, reason: str) -> FileNotFoundError:
    inter_file = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    return FileNotFoundError(
        f"dataset [{config['dataset']}] not found: looked for {inter_file} ({reason}). "
        "Put the atomic files there, point --data_path at the folder that holds "
        f"{config['dataset']}/, or see dataset/README.md"
    )


def create_dataset(config):
    """RecBole's ``create_dataset``; a data set that is missing and cannot be downloaded raises
    ``FileNotFoundError`` naming the path it looked in."""
    data_path = config["data_path"]
    if not os.path.isdir(data_path):
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            return recbole_create_dataset(config)
        except Exception as error:
            raise _missing_data_error(config, f"download failed: {error}") from error
        finally:
            socket.setdefaulttimeout(previous_timeout)
    if not os.path.isfile(os.path.join(data_path, f"{config['dataset']}.inter")):
        raise _missing_data_error(config, f"the folder {data_path} has no .inter file")
    return recbole_create_dataset(config)


data_preparation = recbole_data_preparation
