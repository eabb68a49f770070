"""The seed sweep: the train stage rerun for further seeds, everything else fixed, and its spread."""
