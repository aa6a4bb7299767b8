"""An on-disk graph store: datasets larger than memory, read one structure at a time.

A store is a folder built once from ASE-readable sources (extxyz, ASE ``.db``, GPUMD xyz with
``file_format="gpumd-xyz"``)::

    store/
      manifest.json          what it was built from (content fingerprints, cutoff, label keys,
                             format), its shards and the dataset statistics (E0 normal
                             equations, force RMS, neighbour counts)
      shard_00000.safetensors, shard_00001.safetensors, ...
      .lock                  held by the process that builds it

Each shard holds the graphs of ``shard_size`` consecutive source frames as a few concatenated
arrays plus offset tables (:mod:`.layout`); an item is read with memory-mapped slices, so a
process (or DataLoader worker) holds only the structures it is batching, whatever the size of
the store. :class:`.reader.GraphStore` returns the same ``torch_geometric.data.Data`` as
:func:`mlip_plugins.data.structures.atoms_to_graph` (same fields, dtypes and values).

Why safetensors: the format is a JSON header and raw little-endian arrays (no pickled objects,
so opening a store runs no code, like the weights-only graph cache), it is memory-mapped with
zero-copy slicing, maintained by Hugging Face, and needs no server, map size or environment
(LMDB) nor a chunked-array stack (zarr); a shard is one file, so it is written atomically.

Modules: :mod:`.layout` (arrays of a shard, manifest, errors), :mod:`.statistics` (one-pass
statistics), :mod:`.build` (parallel, resumable, locked build), :mod:`.reader` (the dataset).
"""
