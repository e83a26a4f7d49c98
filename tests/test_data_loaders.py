"""The dataset loaders, each on small files the test writes in the real format, plus the
real Fashion-MNIST installed by Debian's dataset-fashion-mnist."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import rtk
from rtk.data import DataOptions, apply_limits
from rtk.errors import ConfigError, DataError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- writers of the real formats
def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True) -> None:
    """An IDX file: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    codes = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    dt = np.dtype("u1") if arr.dtype == np.uint8 else arr.dtype.newbyteorder(">")
    raw = bytes([0, 0, codes[dt], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dt).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_idx_set(
    folder: Path,
    n_train: int = 30,
    n_test: int = 12,
    size: tuple[int, int] = (28, 28),
    *,
    gz: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        IDX_NAMES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        IDX_NAMES[3]: (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(folder / name, arr, gz=gz)
    return arrays


class _Py2Pickle:
    """Writes a pickle the way Python 2's cPickle wrote CIFAR's batches (protocol 2,
    ``str`` as BINSTRING, numpy arrays through ``numpy.core.multiarray._reconstruct``)."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def string(self, s: str | bytes) -> None:
        b = s.encode("latin1") if isinstance(s, str) else s
        self.out += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def value(self, v: object) -> None:
        if isinstance(v, (str, bytes)):
            self.string(v)
        elif isinstance(v, bool):
            self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, int):
            self.out += b"J" + struct.pack("<i", v)
        elif v is None:
            self.out += b"N"
        elif isinstance(v, list):
            self.out += b"]("
            for item in v:
                self.value(item)
            self.out += b"e"
        elif isinstance(v, tuple):
            self.out += b"("
            for item in v:
                self.value(item)
            self.out += b"t"
        elif isinstance(v, dict):
            self.out += b"}("
            for k, item in v.items():
                self.value(k)
                self.value(item)
            self.out += b"u"
        elif isinstance(v, np.ndarray):
            assert v.dtype == np.uint8
            self.out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            self.value((0,))
            self.string("b")
            self.out += b"\x87R"  # TUPLE3, REDUCE
            self.out += b"("
            self.value(1)
            self.value(tuple(int(d) for d in v.shape))
            self.out += b"cnumpy\ndtype\n"
            self.value(("u1", 0, 1))
            self.out += b"R"
            self.value((3, "|", None, None, None, -1, -1, 0))
            self.out += b"b"  # BUILD the dtype
            self.value(False)
            self.string(np.ascontiguousarray(v).tobytes())
            self.out += b"tb"  # the state tuple, BUILD the array
        else:  # pragma: no cover - the test only writes the types above
            raise TypeError(type(v))

    @classmethod
    def dumps(cls, obj: object) -> bytes:
        w = cls()
        w.value(obj)
        return bytes(w.out + b".")


def cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def make_cifar10(root: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = cifar_images(per_batch, i), [(i + j) % 10 for j in range(per_batch)]
        xs.append(x)
        ys += y
        batch = {
            "batch_label": f"training batch {i} of 5",
            "labels": y,
            "data": x,
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        }
        (folder / f"data_batch_{i}").write_bytes(_Py2Pickle.dumps(batch))
    xt, yt = cifar_images(3, 99), [9, 0, 4]
    (folder / "test_batch").write_bytes(
        _Py2Pickle.dumps(
            {"batch_label": "testing batch 1 of 1", "labels": yt, "data": xt, "filenames": ["a", "b", "c"]}
        )
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(
        _Py2Pickle.dumps({"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    )
    return np.concatenate(xs), np.array(ys), xt, np.array(yt)


# ----------------------------------------------------------------------------- IDX
def test_read_idx_gz_and_raw_give_the_written_arrays(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr, gz=True)
    write_idx(tmp_path / "b", arr, gz=False)
    ints = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    write_idx(tmp_path / "c", ints, gz=False)
    assert np.array_equal(rtk.data.read_idx(tmp_path / "a.gz"), arr)
    assert np.array_equal(rtk.data.read_idx(tmp_path / "b"), arr)
    assert np.array_equal(rtk.data.read_idx(tmp_path / "c"), ints)


def test_read_idx_rejects_corrupt_files_naming_them(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(DataError, match=r"bad: not an IDX file"):
        rtk.data.read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 3, 3) + b"\x00" * 5)
    with pytest.raises(
        DataError, match=r"short: IDX header says shape \[3, 3\] \(9 bytes of data\) but the file holds 5"
    ):
        rtk.data.read_idx(short)
    broken_gz = tmp_path / "x.gz"
    broken_gz.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(DataError, match=r"x\.gz: cannot read"):
        rtk.data.read_idx(broken_gz)


def test_mnist_loads_gz_files_exactly(tmp_path):
    arrays = make_idx_set(tmp_path)
    b = rtk.data.load_mnist(root=tmp_path)
    assert (
        b.info.name == "mnist"
        and b.info.num_classes == 10
        and (b.info.channels, b.info.height, b.info.width) == (1, 28, 28)
    )
    assert b.info.mean == (0.1307,) and b.info.std == (0.3081,)
    assert b.train.x.shape == (30, 1, 28, 28) and b.test.x.shape == (12, 1, 28, 28)
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert torch.equal(b.train.x[:, 0], torch.from_numpy(arrays[IDX_NAMES[0]]).float() / 255)
    assert torch.equal(b.test.y, torch.from_numpy(arrays[IDX_NAMES[3]]).long())


def test_fashion_mnist_reads_torchvision_layout_uncompressed(tmp_path):
    arrays = make_idx_set(tmp_path / "FashionMNIST" / "raw", gz=False, seed=5)
    b = rtk.data.load_fashion_mnist(root=tmp_path)
    assert b.info.class_names[0] == "T-shirt/top" and b.info.class_names[9] == "Ankle boot"
    assert torch.equal(b.test.x[:, 0], torch.from_numpy(arrays[IDX_NAMES[2]]).float() / 255)


def test_generic_idx_dataset_computes_statistics_and_classes(tmp_path):
    make_idx_set(tmp_path, n_train=20, n_test=5, size=(5, 7))
    b = rtk.data.load_idx_dataset(tmp_path, name="tiny")
    assert (b.info.height, b.info.width, b.info.num_classes) == (5, 7, 10)
    assert b.info.mean[0] == pytest.approx(float(b.train.x.mean()), abs=1e-4)
    assert b.info.std[0] == pytest.approx(float(b.train.x.std()), abs=1e-4)


def test_idx_label_count_and_range_are_checked(tmp_path):
    make_idx_set(tmp_path)
    write_idx(tmp_path / IDX_NAMES[1], np.zeros(29, dtype=np.uint8))
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte\.gz: expected 30 labels \(one per image\), got shape \[29\]"
    ):
        rtk.data.load_mnist(root=tmp_path)
    write_idx(tmp_path / IDX_NAMES[1], np.full(30, 12, dtype=np.uint8))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9, found 12\.\.12"):
        rtk.data.load_mnist(root=tmp_path)


def test_missing_idx_files_say_what_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        rtk.data.load_fashion_mnist(root=tmp_path / "nowhere")
    msg = str(err.value)
    for name in IDX_NAMES:
        assert f"{name}[.gz]" in msg
    assert str(tmp_path / "nowhere") in msg and str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download = true" in msg
    # a folder with some of the files: the error names exactly what it lacks
    write_idx(tmp_path / "part" / IDX_NAMES[0], np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(
        DataError,
        match=r"part exists but lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        r"t10k-labels-idx1-ubyte",
    ):
        rtk.data.load_mnist(root=tmp_path / "part")


def test_default_roots_follow_rtk_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RTK_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path / "mnist")):
        rtk.data.load_mnist()
    make_idx_set(tmp_path / "mnist")
    assert len(rtk.data.load_mnist().train) == 30


def test_download_is_used_only_when_asked_and_files_are_missing(tmp_path, monkeypatch):
    import rtk.data.download as dl

    calls = []

    def fake_download(key, root):
        calls.append((key, root))
        make_idx_set(root / "MNIST" / "raw", n_train=10, n_test=4)

    monkeypatch.setattr(dl, "download", fake_download)
    with pytest.raises(DataError):
        rtk.data.load_mnist(root=tmp_path)  # download not asked: no call
    assert calls == []
    b = rtk.data.load_mnist(root=tmp_path, download=True)
    assert calls == [("mnist", tmp_path)] and len(b.train) == 10
    rtk.data.load_mnist(root=tmp_path, download=True)  # files now present: no second download
    assert len(calls) == 1

    def offline(key, root):
        raise DataError(f"dataset {key!r}: download into {root} failed: URLError: no network")

    monkeypatch.setattr(dl, "download", offline)
    with pytest.raises(DataError, match="download into .* failed: URLError"):
        rtk.data.load_cifar10(root=tmp_path / "c", download=True)


# ----------------------------------------------------------------------------- real Fashion-MNIST
@pytest.fixture(scope="module")
def fashion():
    assert (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file(), (
        "Fashion-MNIST is not installed: as root, apt-get install dataset-fashion-mnist (scripts/setup.sh does it)"
    )
    return rtk.data.load_fashion_mnist()


def test_real_fashion_mnist(fashion):
    b = fashion
    assert b.train.x.shape == (60000, 1, 28, 28) and b.test.x.shape == (10000, 1, 28, 28)
    assert b.train.x.dtype == torch.float32
    assert float(b.train.x.min()) == 0.0 and float(b.train.x.max()) == 1.0
    assert torch.equal(torch.bincount(b.train.y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(b.test.y), torch.full((10,), 1000))
    # the published normalisation constants describe the training images
    assert b.info.mean[0] == pytest.approx(float(b.train.x.mean()), abs=1e-3)
    assert b.info.std[0] == pytest.approx(float(b.train.x.std()), abs=1e-3)


def test_fashion_mnist_subsets_are_deterministic(fashion):
    a = apply_limits(fashion, DataOptions(limit_train=500, limit_test=200, seed=3))
    b = apply_limits(fashion, DataOptions(limit_train=500, limit_test=200, seed=3))
    c = apply_limits(fashion, DataOptions(limit_train=500, limit_test=200, seed=4))
    assert len(a.train) == 500 and len(a.test) == 200
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert len(torch.unique(a.train.y)) == 10


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_reads_python2_batches(tmp_path):
    x, y, xt, yt = make_cifar10(tmp_path)
    b = rtk.data.load_cifar10(root=tmp_path)
    assert b.info.name == "cifar10" and (b.info.channels, b.info.height, b.info.width) == (3, 32, 32)
    assert b.info.class_names[:2] == ("airplane", "automobile") and len(b.info.mean) == 3
    assert b.train.x.shape == (20, 3, 32, 32) and b.test.x.shape == (3, 3, 32, 32)
    assert torch.equal(b.train.y, torch.from_numpy(y)) and torch.equal(b.test.y, torch.from_numpy(yt))
    # row layout: 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order
    assert round(float(b.train.x[0, 1, 2, 3]) * 255) == x[0, 1024 + 2 * 32 + 3]
    assert round(float(b.test.x[2, 2, 31, 0]) * 255) == xt[2, 2048 + 31 * 32]
    assert torch.equal(b.train.x.flatten(1), torch.from_numpy(x).float() / 255)


def test_cifar100_fine_and_coarse_labels_from_modern_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine, coarse = list(range(0, 100, 10)), [i % 20 for i in range(10)]
    for split, n in (("train", 10), ("test", 10)):
        d = {b"data": cifar_images(n, 7), b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": [b"f"] * n}
        (folder / split).write_bytes(pickle.dumps(d, protocol=4))
    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    b = rtk.data.load_cifar100(root=tmp_path)
    assert b.info.num_classes == 100 and b.info.class_names[10] == "fine10" and b.train.y.tolist() == fine
    c = rtk.data.load_cifar100(root=tmp_path, labels="coarse")
    assert c.info.num_classes == 20 and c.info.class_names[3] == "coarse3" and c.test.y.tolist() == coarse


def test_cifar_pickles_that_name_code_are_refused(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match=r"data_batch_3: refusing to unpickle the global posix\.mkdir"):
        rtk.data.load_cifar10(root=tmp_path)
    assert not marker.exists()
    obj_array = np.array([1, "x"], dtype=object)
    with pytest.raises(DataError, match="refusing a numpy array of Python objects"):
        rtk.data.safe_load(pickle.dumps({"data": obj_array}))


def test_cifar_errors_name_the_file_and_what_is_wrong(tmp_path):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(
        DataError, match=r"test_batch: expected 'data' of shape \[N, 3072\] and dtype uint8, got \[2, 100\]"
    ):
        rtk.data.load_cifar10(root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(
        DataError,
        match=r"(?s)Expected data_batch_1, .* test_batch in one of.*lacks data_batch_5.*"
        r"download = true.*cifar-10-python\.tar\.gz",
    ):
        rtk.data.load_cifar10(root=tmp_path)


# ----------------------------------------------------------------------------- SVHN
def test_svhn_reads_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9], [5]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": X, "y": y})
    savemat(tmp_path / "test_32x32.mat", {"X": X[..., :2], "y": y[:2]})
    b = rtk.data.load_svhn(root=tmp_path)
    assert b.train.x.shape == (6, 3, 32, 32) and b.train.y.tolist() == [0, 1, 2, 0, 9, 5]
    assert round(float(b.train.x[4, 2, 5, 7]) * 255) == X[5, 7, 2, 4]  # (H, W, C, N) -> (N, C, H, W)
    assert b.info.class_names[0] == "0" and len(b.test) == 2
    with pytest.raises(DataError, match=r"extra_32x32\.mat"):
        rtk.data.load_svhn(root=tmp_path, extra=True)
    savemat(tmp_path / "extra_32x32.mat", {"X": X[..., :3], "y": y[:3]})
    assert len(rtk.data.load_svhn(root=tmp_path, extra=True).train) == 9
    savemat(tmp_path / "test_32x32.mat", {"X": X[..., :2], "y": np.array([[0], [3]], np.uint8)})
    with pytest.raises(DataError, match=r"test_32x32\.mat: labels must lie in 1\.\.10"):
        rtk.data.load_svhn(root=tmp_path)


# ----------------------------------------------------------------------------- image folders
def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("n01440764", "zebra"):
            for i in range(n):
                _png(root / split / c / f"{i}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    _png(root / "train" / "zebra" / "gray.png", rng.integers(0, 256, (24, 24), dtype=np.uint8))
    (root / "train" / "zebra" / "notes.txt").write_text("not an image")


def test_image_folder_resizes_and_center_crops_lazily(tmp_path):
    make_image_folder(tmp_path)
    # 24 wide x 16 high: the centre 16x16 is white, the 4-pixel strips at each side black
    arr = np.zeros((16, 24, 3), np.uint8)
    arr[:, 4:20] = 255
    _png(tmp_path / "val" / "zebra" / "9.png", arr)
    b = rtk.data.load_image_folder(tmp_path, image_size=16, resize=16)
    assert isinstance(b.train, rtk.data.ImageFolderSplit)
    assert b.info.class_names == ("tench", "zebra") and b.info.num_classes == 2
    assert (b.info.channels, b.info.height, b.info.width) == (3, 16, 16) and b.info.mean == (0.485, 0.456, 0.406)
    assert len(b.train) == 7 and len(b.test) == 5  # the .txt file is ignored; the gray image is converted
    x, y = b.test[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and int(y) == 1
    assert torch.equal(x, torch.ones(3, 16, 16))  # exactly the white centre
    xs = [b.train[i][0] for i in range(len(b.train))]
    assert all(t.shape == (3, 16, 16) and 0 <= float(t.min()) and float(t.max()) <= 1 for t in xs)
    # lazy: images are decoded when asked for, so a changed file shows at the next access
    _png(tmp_path / "val" / "zebra" / "9.png", np.zeros((16, 24, 3), np.uint8))
    assert float(b.test[4][0].max()) == 0.0
    xb, yb = next(iter(rtk.data.batches(b.train, 4)))
    assert xb.shape == (4, 3, 16, 16) and yb.dtype == torch.int64


def test_image_folder_grayscale_default_resize_and_subsets(tmp_path):
    make_image_folder(tmp_path)
    b = rtk.data.load_image_folder(tmp_path, image_size=8, grayscale=True, name="tiny")
    assert b.info.name == "tiny" and b.info.channels == 1 and len(b.info.mean) == 1
    assert b.train[0][0].shape == (1, 8, 8)
    s1 = apply_limits(b, DataOptions(limit_train=3, limit_test=2, seed=1))
    s2 = apply_limits(b, DataOptions(limit_train=3, limit_test=2, seed=1))
    assert len(s1.train) == 3 and s1.train.indices == s2.train.indices


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"expected .*train/<class>/<images> and .*val"):
        rtk.data.load_image_folder(tmp_path)
    make_image_folder(tmp_path)
    (tmp_path / "val").rename(tmp_path / "valid")
    with pytest.raises(DataError, match=r"no test split; expected the folder .*val or .*test"):
        rtk.data.load_image_folder(tmp_path, image_size=8)
    (tmp_path / "valid").rename(tmp_path / "test")
    _png(tmp_path / "test" / "lion" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"class folders lion are not among the training classes"):
        rtk.data.load_image_folder(tmp_path, image_size=8)


def test_image_folder_options_are_checked(tmp_path):
    spec = rtk.default_registry().get("dataset", "imagefolder")
    with pytest.raises(ConfigError, match=r"dataset\.root: required key is missing"):
        rtk.validate_options(spec.options, {}, "dataset")
    with pytest.raises(ConfigError, match=r"resize \(100\) must be at least image_size \(224\)"):
        rtk.validate_options(spec.options, {"root": str(tmp_path), "resize": 100}, "dataset")
    with pytest.raises(ConfigError, match=r"mean needs 1 values"):
        rtk.validate_options(
            spec.options, {"root": ".", "grayscale": True, "mean": [0.1, 0.2, 0.3], "std": [1.0]}, "dataset"
        )


# ----------------------------------------------------------------------------- planning
def test_missing_dataset_files_fail_the_plan_before_any_work(tmp_path):
    exp = rtk.experiment_from_dict(
        {
            "name": "t",
            "dataset": {"name": "cifar10", "root": str(tmp_path / "none")},
            "models": {"m": {"arch": "resnet-small"}},
            "stages": [{"kind": "train", "model": "m", "epochs": 1}],
        }
    )
    with pytest.raises(ConfigError) as err:
        rtk.plan(exp)
    assert "dataset: dataset 'cifar10': files not found" in str(err.value)
    assert str(tmp_path / "none" / "cifar-10-batches-py") in str(err.value)
    make_cifar10(tmp_path / "none")
    assert rtk.plan(exp).dataset_spec.name == "cifar10"
