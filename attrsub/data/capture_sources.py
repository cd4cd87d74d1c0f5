"""Real captured data from two Debian packages: download, verify and cache them once.

``attrsub fetch-real`` (``fetch_real``) is the only code in attrsub that downloads anything:
it runs ``apt-get download visp-images-data opencv-doc`` into a temporary folder (after one
``apt-get update`` when the package lists are missing and it runs as root), unpacks the
.debs with ``dpkg -x`` (nothing is installed), copies the few files the loaders need into
``<cache root>/real-captures-v1`` (default cache root: ``attrsub.data.datasets.default_cache_root``,
i.e. ``$ATTRSUB_CACHE`` or ``~/.cache/attrsub/datasets``), checks each file's sha256 against
``SHA256`` and publishes the folder by one atomic rename, so a reader never sees half of it.

The checksums were taken from visp-images-data 3.5.0-1 and opencv-doc 4.6.0+dfsg-12 (Debian
bookworm). Another release of the packages may ship other bytes; the fetch then stops
naming the file rather than caching data the loaders were not checked against. Already
downloaded .debs can be given instead of downloading (``--debs``), which works offline.
What the files hold is documented in ``attrsub.data.captures``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from attrsub.data.datasets import default_cache_root
from attrsub.errors import DataError
from attrsub.fetch import file_sha256
from attrsub.fsio import check_creatable, publish_dir, write_json

PACKAGES = ("visp-images-data", "opencv-doc")
# The package versions SHA256 was recorded from.
CHECKED_VERSIONS = {"visp-images-data": "3.5.0-1", "opencv-doc": "4.6.0+dfsg-12"}
CACHE_NAME = "real-captures-v1"
MANIFEST = "attrsub-real.json"
# Where each cached folder's files sit inside the unpacked packages.
_SOURCES = {
    "castel": "usr/share/visp-images-data/ViSP-images/mbt-depth/castel",
    "opencv": "usr/share/doc/opencv-doc/examples/data",
}
FETCH_HINT = "attrsub fetch-real"

# Cached file (folder/name) -> sha256 of its bytes.
SHA256: dict[str, str] = {
    "castel/chateau.xml": "cf2cee6286c2547c43abde4ffa22af3bbe4dbb87923cacbc7fda6c354c26189f",
    "castel/chateau_depth.xml": "3d7245ae6d857c3d10a33adeb9dd74727715973aea06d2498ce368648ed673c6",
    "castel/depth_M_color.txt": "94255ebbba15cc112353134ac7ba8edd6cbcea2372af60760621ffc39c1bc18e",
    "castel/chateau.0.pos": "9a433144d7ecada35b828b2a0472524466c32a314a9eefe87709a065385b5a97",
    "castel/chateau.init": "d171082d630e16e19d6e95ce26eb2790ba062e2ed96afa265c40bef5b3ec54c0",
    "castel/depth_image_0000.bin":
        "62d1e5d53ac4357d59e3da52b258fa5b756b162019af6859ff432f5b268241dd",
    "castel/depth_image_0001.bin":
        "4a10c4c7d98c6cc997862f790b5b079b69b44785bd13d0b131e4f0bcf562bb84",
    "castel/depth_image_0002.bin":
        "6dd0d361ae7a821bac75332c2f675fdf0bdcbadb2a42cdfe6ac79e989fcb8740",
    "castel/depth_image_0003.bin":
        "1edff94c11089debe45d3e331891fc6c4d36f0963490014217dbd47b695183f6",
    "castel/depth_image_0004.bin":
        "e2582fb0ed568730af7d277c72f9b4daf1f7e83f248f2b919ad8e1a5158d60c3",
    "castel/depth_image_0005.bin":
        "f3b112b59168ee973711599d14afadbb103f7530f529a3a600e3d91f1e8189bd",
    "castel/depth_image_0006.bin":
        "405a74a9c8667988e642457c134e58a78d87ac73958e2161ff5a56d21f17fbca",
    "castel/depth_image_0007.bin":
        "4ab78f39b4ea938bb1e0a38243f6f889df2b887e48578d9a049736deb163ef10",
    "castel/depth_image_0008.bin":
        "995b277876494a489857a65c23cb3014ff3c2c84c8aa60d5650f7519d0e6bf6d",
    "castel/depth_image_0009.bin":
        "b844234398bf601da0c5a07ff8561ad43a3c7ecee1fc640ecb7b879f56009b64",
    "castel/depth_image_0010.bin":
        "e26de3803fb094fa6118d69823bcae160acee232f63180932e18707fb79e0778",
    "castel/depth_image_0011.bin":
        "329c20e7fb94ef9423119529c35c18723f1d1bd235ffcfa1047a885a4abed033",
    "castel/depth_image_0012.bin":
        "cc1d464b36a2038e6705e5b1d582c4a035c4171331ce79c03475757e43ab1211",
    "castel/depth_image_0013.bin":
        "4b065e60bdf35d358eabce9cd25b506242778167a0ef8c645b5839846937414a",
    "castel/depth_image_0014.bin":
        "58cf9f9b336a6221d74228b81fa797225ebc61ad2a9b5feacbce3e96282cd3cb",
    "castel/depth_image_0015.bin":
        "073cfe6ceea69793b677c69a608701aae07eff118aa3b3e14ee49fe02f66967b",
    "castel/depth_image_0016.bin":
        "86d922c25381235776a48251b8887502713d2f1a6ad026536084ff1daac7843f",
    "castel/depth_image_0017.bin":
        "351f4a76b296fe257c5fb35c8d9f970bb1a0353b1e85d99aabc37ef67792a960",
    "castel/depth_image_0018.bin":
        "69261fb81a6ee2b6d5afc725e904f9e506c4bd84141e8a7ca90ce47bed5ce10b",
    "castel/depth_image_0019.bin":
        "b0984447de9e3724b17183b34b77a07a7f7eb05f872db73f0906a19f3ca893bf",
    "castel/depth_image_0020.bin":
        "0a43d702f235f0979cda0a3db449641cd5224e76252da03e86e86733bf82b8f1",
    "castel/depth_image_0021.bin":
        "beecf84d47a6f389a31206d8cae2caa91cbfc963d91e22461e052c9b523b6353",
    "castel/depth_image_0022.bin":
        "b657ea0cdae215648928131b60609a3f65dfc0cb1db82e43dfe324dfe6c42a78",
    "castel/depth_image_0023.bin":
        "c6fbe827bf04bbbe49df8b483d87b7883a165ea8f1589458b0559463c9e1a776",
    "castel/depth_image_0024.bin":
        "521b6c22dd68c5d05936a22cff7a2a43ae1009fab6d8dd7fe5261b8f82d0c2c2",
    "castel/depth_image_0025.bin":
        "ee888020b2be0d27b3d6dfd2cb4b761b31e82f28733d20406c9103ca707340eb",
    "castel/depth_image_0026.bin":
        "92b271fa84f5b6775ef92920714ca93bb0a57d9e41858211d5860b2d0c8eabba",
    "castel/depth_image_0027.bin":
        "94d26172c3ab54e4768110659c12b744faf5d050cea9f41eb40a91f5e2233120",
    "castel/depth_image_0028.bin":
        "16cf71149d0bd71f28f34c4e78daa78e4eabefaf70d52d24bac2dafe4f9d562c",
    "castel/depth_image_0029.bin":
        "f3111a2ed00cd3c82c402705418d7e93752308c2d1d29ff015b3b22672cdfdc8",
    "castel/image_0000.pgm": "b90e4b28fbab2e52b014b72daedc2176166938f7fb66cb710172138038898c7e",
    "castel/image_0001.pgm": "b727c9ef7382a15ca07a0301d49ad06c27be875b835ee3a800c8ebf8d0605090",
    "castel/image_0002.pgm": "ba88540b2966c5f81681fa7619e1e4b20e2686393f25268003f10c834c5da1ab",
    "castel/image_0003.pgm": "968ce70c2ead7fec72e33e651f65a2e23e77ebe2e9bc5578e449c367067e456b",
    "castel/image_0004.pgm": "74410b9403e3ed94c3e3912a5b024c76df1dc172e86f1c006056b5db80051b30",
    "castel/image_0005.pgm": "4536736a23a1b71150e01318f750e67b6087cbddd6eaf44a725b27ba896e1401",
    "castel/image_0006.pgm": "cd476ca147365ef0e06d2c6ae852a78c242c7bfd4465e905988c4eec93204314",
    "castel/image_0007.pgm": "b18d0cb193681b8ff654d5961057fa679e612ac4ab6303f7e7d78d6a16c0c79d",
    "castel/image_0008.pgm": "cf3ae06011e5fe71ed6ac14d1a7cd8b50df32c459a4b10e846b52b15520547b4",
    "castel/image_0009.pgm": "273a184ba65b43ce3c951dcc82464fa3c70b9987a8cf29b72cf398e6754edf24",
    "castel/image_0010.pgm": "3125ba078e888e13996d27a1f7ff87ccb66786dbddf852c1f7394c01f911c6cf",
    "castel/image_0011.pgm": "3113261da91360c8cebec5cee14e2b402dfb272d07ad10f7995ff0d1469b9fba",
    "castel/image_0012.pgm": "af9760fc13546479d3f9b510549020bfcbf839242ba441fe01cc69b24a194fd0",
    "castel/image_0013.pgm": "94732cdf3fd252cd72a58b1966d20fa2273074704bf9856864a54bace68cc958",
    "castel/image_0014.pgm": "e09c63a5e08c8654fb6b20d3ef5784c2bfe6a30fab24da13764d2a9d88aad11e",
    "castel/image_0015.pgm": "a2920e9e88897eebc1db1895ea88301f25256f6b7db0039167f4e824f0796a3f",
    "castel/image_0016.pgm": "bb9443e3edec84a133678ebc43aa43dbde1dad56c2cd9c2c8348f562756c0dbf",
    "castel/image_0017.pgm": "fdc081792ae354527f14fc63f0d13649b4f2613129c72d362bc0565004b59faf",
    "castel/image_0018.pgm": "e10509905df4ff6882597167f18f1b04370b4f801c18149a674e746ae1439613",
    "castel/image_0019.pgm": "a90aca50aaa0c34e7f702df3a7300800c7806f946a89854e585b64690bcf0add",
    "castel/image_0020.pgm": "37bc05d72ad7f879564965039d1ed6b77bbb560f1378f621ae986920a96ed932",
    "castel/image_0021.pgm": "4b87f930eb67e8d31f66091ddf9b684e1175afea53f32397a5905b9b983730af",
    "castel/image_0022.pgm": "4b1f6fea60bbf88eab37eb2124f52aae6af000a9a5c8979ca91c60e2949d9701",
    "castel/image_0023.pgm": "77e4dc27afa5a1f30522b5d4e9decbb56cb3b9131d587cdb1a75346a9efacb39",
    "castel/image_0024.pgm": "37c2f349715742e4ad6e5e527750a19d7598cf8a6ad783c557ce7a7f8d8f17a3",
    "castel/image_0025.pgm": "2453e254809504fb2e16811c9b6574cad59a08c57779d56a8558dd6b4d338d52",
    "castel/image_0026.pgm": "1e89d8aefaf19f77c342a07ccb9cdea00ebf8d0d4e69e363c248b447a83406f6",
    "castel/image_0027.pgm": "817b3c3270b2ae5fb6d82cdf370da59d1ba06df6ff87416d5cb98fec4f9d6c94",
    "castel/image_0028.pgm": "2bcdd9736b6de3eb995e94599d891f7a159eecfb59737d08ce0af3621359d69b",
    "castel/image_0029.pgm": "85afcf07e67095b9e51d0655172cb5a0e1e0af644787620a305df7b46c53a311",
    "opencv/aloeL.jpg": "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee",
    "opencv/aloeR.jpg": "9b23100df31a846bc6e6a6545563b2b4120b948c9835c7d36cde00af77f4503e",
    "opencv/aloeGT.png": "39ce4f3cb48d797d1091c5152f93361d8104298c337f8a1c134d87dda3442c04",
    "opencv/left_intrinsics.yml":
        "93a35a94eaaa63afba5128292cf2800fce3e783eba12a69e3d3731360d594684",
    "opencv/left01.jpg": "9621899098adffa1440c8264606bb7be535ccfd9ad126ae8e0bd9b0c5a5b8676",
    "opencv/left02.jpg": "052e700bbcc865c112958ec2ea105cb1bce4deca50ac8d6efae13adca9df7a2c",
    "opencv/left03.jpg": "c85b9426c3d8fcf161e1e727356105091009c3fd0b1b1a65bc2da91fea2724d2",
    "opencv/left04.jpg": "b490599dccfbfe5eb56d33363415b02227a9548ab8c9b8e7b05d3580e97266d9",
    "opencv/left05.jpg": "40bab8934fa76f82ec614a7fd0e6ebb4d9f74391d5e8b0c6f2f0ed6080c6c4de",
    "opencv/left06.jpg": "1cb164db61b3bd52f58a7e9340bb27c5e0278895bc80b6f292fba5cf9bccc4a1",
    "opencv/left07.jpg": "d2211fe9f971646b6ff88ed93a4f0d3f443741eb2894095cba15caade7c8c6e4",
    "opencv/left08.jpg": "f7a0737894812a28243af5b409c5689f4fadfe7610958b8ca5fc79aec2f2cd1b",
    "opencv/left09.jpg": "753939bc62d093c001d9118e989bef2b887f1b2f9ac03603df915a8b85aa81d3",
    "opencv/left11.jpg": "e736ace3d515c94c547009c3c10d818c81506ed7059cb31123749b9cc3f94ee8",
    "opencv/left12.jpg": "04bdd78b3b507fe0551aa7062a3ffd94846a147ee2bea7fb38082c720bdbe231",
    "opencv/left13.jpg": "2637fb6dd5e557f4fadb06b353a453eb0b9223f4671f6f572f815302bc4a70b3",
    "opencv/left14.jpg": "d4c032971dd7b859f9d6aed5090c9888bd8039b82e0604bee5bfe05444fce834",
    "opencv/right01.jpg": "94a160342fade4d0c4d2e94b8cb6c1e144a6e7682389d2991257e3a28625cb2d",
    "opencv/right02.jpg": "f7819b2fcc45fdeff0cefd666a1f8bd2a5828c4d34367d7b6b6691f442bf1c42",
    "opencv/right03.jpg": "43a3cea1907be641268ea18478362ab6c459424a9d8b7265eb5fb2264fcfb894",
    "opencv/right04.jpg": "d5874ff3d948dbb673beb035dd70aef5e517119ff626ecdfd612fdd6a1eec32e",
    "opencv/right05.jpg": "9382a24af5a21a9e3ec477bd4f74011e4bb10b0cdbc7e0de3ae60b75e95d650b",
    "opencv/right06.jpg": "874b60edc8a53da477c6ee393184a1aafdc83ceaedcb4d0535f7c482d1c80e76",
    "opencv/right07.jpg": "446093eead30c8cb1e51c8d01d322907760a3a57876596a81af6bf0795e9be67",
    "opencv/right08.jpg": "5f1be870c8709fd5fc4dd578103b320018aabb4e18b8e8edaba9afbdd4d0b8f4",
    "opencv/right09.jpg": "de28e9f146f4b7de78b0e39be6682997a7428f8ec5ef4efc753415d4ff8d9d76",
    "opencv/right11.jpg": "2695e8f8e94eaef0bcfe56818090dada6dc76f53e30b77b97bea3a91080949db",
    "opencv/right12.jpg": "07489b6a334fae390954bbbddedf03a0556163e5e364820838e881ebd3f33e0d",
    "opencv/right13.jpg": "a576cc5e69668d65dd926366d103c4c77377e0cd71403e4e0fc278e335ed953c",
    "opencv/right14.jpg": "e98bbe907610e9499d704bd0fe68d4adc158b19346cbc32f4cfe8a0014b1bd62",
}


def package_path(name: str) -> str:
    """Where cached file ``name`` ("castel/image_0000.pgm") sits inside its package."""
    folder, base = name.split("/", 1)
    sub = "castel/" if folder == "castel" and base.startswith(("image_", "depth_image_")) else ""
    return f"{_SOURCES[folder]}/{sub}{base}"


def real_data_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """The folder the real captures live in under cache root ``cache`` (None: the default)."""
    root = Path(cache).expanduser() if cache is not None else default_cache_root()
    return root / CACHE_NAME


def _fetch_command(cache: str | os.PathLike[str] | None) -> str:
    return FETCH_HINT if cache is None else f"{FETCH_HINT} --cache {cache}"


def require_real_data(cache: str | os.PathLike[str] | None = None) -> Path:
    """The real-data folder, or DataError naming what is missing and the command that fetches
    it. Checks presence and sizes only (cheap); ``verify_files`` checks the bytes.

    Looks under cache root ``cache``, then under the default root: a study's own dataset
    cache holds its renders, and its trials find the captures fetched once per machine.
    """
    places = list(dict.fromkeys([real_data_dir(cache), real_data_dir(None)]))
    path = next((p for p in places if (p / MANIFEST).is_file()), None)
    if path is None:
        raise DataError(
            f"real captured data not found at {' or '.join(repr(str(p)) for p in places)}; "
            f"fetch them once per machine (about 170 MB of Debian packages, 28 MB kept) with "
            f"`{FETCH_HINT}`"
        )
    missing = [name for name in SHA256 if not (path / name).is_file()]
    if missing:
        raise DataError(
            f"real captured data at {str(path)!r} lack {len(missing)} files ({missing[0]}, "
            f"...); delete that folder and run `{_fetch_command(path.parent)}` again"
        )
    return path


def verify_files(root: Path) -> None:
    """DataError naming the first file under ``root`` whose sha256 is not the recorded one."""
    for name, expected in SHA256.items():
        path = root / name
        if not path.is_file():
            raise DataError(f"{str(path)!r} is missing (expected from {package_path(name)})")
        got = file_sha256(path)
        if got != expected:
            raise DataError(
                f"{name}: sha256 {got} does not match the recorded {expected} (recorded "
                f"from {', '.join(f'{k} {v}' for k, v in CHECKED_VERSIONS.items())}); "
                f"this package release ships other data"
            )


def copy_verified(unpacked: Path, dest: Path) -> None:
    """Copy every needed file from unpacked packages (``dpkg -x`` roots) into ``dest`` and
    verify it there."""
    for name in SHA256:
        src = unpacked / package_path(name)
        if not src.is_file():
            raise DataError(
                f"the unpacked packages lack {package_path(name)}; expected "
                f"{', '.join(f'{k} {v}' for k, v in CHECKED_VERSIONS.items())}"
            )
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / name)
    verify_files(dest)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _download(tmp: Path) -> list[Path]:
    """``apt-get download`` the packages into ``tmp``; one ``apt-get update`` when apt has no
    package lists yet and we are root."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DataError(
            "apt-get and dpkg are needed to fetch the real data (they come from Debian "
            "packages); on another system download visp-images-data and opencv-doc .debs and "
            "pass them with `attrsub fetch-real --debs FILE FILE`"
        )
    result = _run(["apt-get", "download", *PACKAGES], tmp)
    if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update"], tmp)
        result = _run(["apt-get", "download", *PACKAGES], tmp)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"`apt-get download {' '.join(PACKAGES)}` failed: {' | '.join(tail)}; run "
            f"`apt-get update` (as root) and try again"
        )
    return sorted(tmp.glob("*.deb"))


def fetch_real(
    cache: str | os.PathLike[str] | None = None, *, debs: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Download (or take ``debs``), unpack, verify and cache the real captures; returns their
    folder. A complete folder already there is returned at once."""
    for deb in debs:
        if not Path(deb).is_file():
            what = "is a folder" if Path(deb).is_dir() else "does not exist"
            raise DataError(f"--debs file {str(deb)!r} {what}; give the downloaded .deb files")
    dest = real_data_dir(cache)
    if (dest / MANIFEST).is_file():
        return require_real_data(cache)
    if dest.exists():
        raise DataError(f"{str(dest)!r} exists but is incomplete; delete it and fetch again")
    check_creatable(dest.parent, "cache root")
    with tempfile.TemporaryDirectory(prefix="attrsub-real-") as work:
        tmp = Path(work)
        files = [Path(d) for d in debs] if debs else _download(tmp)
        names = {f.name.split("_", 1)[0] for f in files}
        if not set(PACKAGES) <= names:
            raise DataError(
                f"need .debs of {', '.join(PACKAGES)}, got {', '.join(f.name for f in files)}"
            )
        unpacked = tmp / "root"
        for deb in files:
            result = _run(["dpkg", "-x", str(deb), str(unpacked)], tmp)
            if result.returncode != 0:
                why = " | ".join(result.stderr.strip().splitlines())
                raise DataError(f"{str(deb)!r} is not a Debian package `dpkg -x` can unpack: {why}")
        versions = {f.name.split("_")[0]: f.name.split("_")[1] for f in files}

        def fill(folder: Path) -> None:
            copy_verified(unpacked, folder)
            write_json(folder / MANIFEST, {"packages": versions, "sha256": SHA256})

        return publish_dir(dest, fill)


def publish_real(cache: str | os.PathLike[str] | None, where: str) -> bool:
    """Copy this machine's verified captures to ``where`` (a folder or URI, the captures'
    place in a study's storage) unless they are there; returns whether it copied."""
    from attrsub import storage

    if storage.exists(storage.join(where, MANIFEST)):
        return False
    storage.put_dir(require_real_data(cache), where, MANIFEST)
    return True


def pull_real(where: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The captures in this machine's cache, copied from ``where`` (see ``publish_real``)
    when the cache lacks them, so a node of any image needs neither apt nor .debs."""
    from attrsub import storage

    try:
        return require_real_data(cache)
    except DataError:
        if not storage.exists(storage.join(where, MANIFEST)):
            raise
    dest = storage.get_dir(where, real_data_dir(cache), MANIFEST)
    try:
        verify_files(dest)  # the copy is checked against the packages' hashes, as a fetch is
    except DataError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return require_real_data(cache)
