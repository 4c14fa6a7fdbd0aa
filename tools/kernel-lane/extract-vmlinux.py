"""Unpack the ELF vmlinux from a bzImage, for PVH direct boot under qemu.

    python3 extract-vmlinux.py VMLINUZ OUT

qemu boots an ELF vmlinux that carries the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) directly,
so the kernel's own decompressor never runs: under TCG that saves about 3 s per boot. Debian
compresses the payload with XZ; gzip is handled too. Standard library only (runs before any venv).
"""

import lzma
import os
import sys
import zlib

MAGICS = (
    (b"\xfd7zXZ\x00", lambda data: lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)),
    (b"\x1f\x8b\x08", lambda data: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)),
)


def extract(image: bytes) -> tuple[bytes, int]:
    """Return (vmlinux, offset): the first compressed stream in ``image`` that holds an ELF."""
    for magic, decompress in MAGICS:
        offset = image.find(magic)
        while offset >= 0:
            try:
                out = decompress(image[offset:])
            except (lzma.LZMAError, zlib.error, EOFError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out, offset
            offset = image.find(magic, offset + 1)
    raise SystemExit("extract-vmlinux: no compressed ELF payload found (not an XZ/gzip bzImage?)")


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1], "rb") as fh:
        vmlinux, offset = extract(fh.read())
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(vmlinux)
    os.replace(tmp, sys.argv[2])
    print(f"extract-vmlinux: {len(vmlinux)} bytes from offset {offset}", file=sys.stderr)


if __name__ == "__main__":
    main()
