"""A map-style dataset over an archive's members, for PyTorch-like loaders.

Item i is the bytes of member i (in archive order) of a rear archive or
series.  It keeps no open reader across a fork: each loader worker process
opens its own on first use, so ``DataLoader(dataset, num_workers=N)`` is
safe.  rear itself never imports torch; this class needs nothing but rear.

    from dataset import ArchiveDataset
    dataset = ArchiveDataset("/scratch/run42", "results.zip", prefix="task-")
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=4,
                                         collate_fn=list)
"""

import os

import rear


class ArchiveDataset:
    """Members of ``dest`` under ``base`` whose names start with ``prefix``,
    as ``dataset[i] -> bytes``; ``transform`` (if given) is applied to them."""

    def __init__(self, base, dest, prefix="", transform=None, pending=False):
        self.base, self.dest, self.pending = base, dest, pending
        self.transform = transform
        with rear.open_archive(base, dest, pending=pending) as reader:
            # Directory entries ("name/") hold no data; a name in several
            # archives of a series is one item (read() answers with one copy).
            self.names = list(dict.fromkeys(name for name in reader.names(prefix)
                                            if not name.endswith("/")))
        self._reader = None
        self._reader_pid = None

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        data = self._open_reader().read(self.names[index])
        return self.transform(data) if self.transform is not None else data

    def _open_reader(self):
        # A reader opened before a fork belongs to the parent: open our own.
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = rear.open_archive(self.base, self.dest, pending=self.pending)
            self._reader_pid = os.getpid()
        return self._reader

    def __getstate__(self):
        # Spawned workers get the names, not the parent's open reader.
        state = dict(self.__dict__)
        state["_reader"] = state["_reader_pid"] = None
        return state
