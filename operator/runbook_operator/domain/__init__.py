"""The pure core: types and decisions. No I/O, no Kopf, time is passed in."""
