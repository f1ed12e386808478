"""Shared by the image tests: a loader that scales to 256 px, and a file writer."""

import pytest

from transforms.core.images.loader import ImageLoader, ImageOptions


@pytest.fixture
def loader():
    return ImageLoader(ImageOptions(max_side=256))


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)
