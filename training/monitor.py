"""What a run reports: a tqdm bar (loss, img/s, ETA) on a terminal, ``metrics.csv``, ``log.txt`` and
TensorBoard when the ``tensorboard`` package is installed (a warning says so when it is asked for
and missing). Only the main rank writes."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

__all__ = ['Monitor']


class Monitor:
    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        start: int,
        total: int,
        progress: bool = True,
        tensorboard: bool = True,
    ):
        self.enabled, self.run_dir = enabled, Path(run_dir)
        self.bar = self.writer = None
        self._csv = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        new = not (self.run_dir / 'metrics.csv').exists()
        self._csv_file = open(self.run_dir / 'metrics.csv', 'a', newline='')
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(['iteration', 'name', 'value', 'time'])
        self._log = open(self.run_dir / 'log.txt', 'a')
        if progress:
            # disable=None: a bar on a terminal, none in a piped or captured log (the log lines stay)
            self.bar = tqdm(
                total=total, initial=start, unit='it', dynamic_ncols=True, file=sys.stderr, disable=None
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.log(
                    'WARNING: run.tensorboard is true but the tensorboard package is not installed '
                    '(pip install tensorboard); the metrics go to metrics.csv only'
                )
            else:
                self.writer = SummaryWriter(str(self.run_dir / 'tensorboard'))

    def log(self, message: str) -> None:
        """A line for the user (stdout) and for ``log.txt``."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stdout)
        else:
            print(message, flush=True)
        self.log_file(message)

    def log_file(self, text: str) -> None:
        """``text`` into ``log.txt`` only (the command line shows it on the console itself)."""
        if not self.enabled or self._log.closed:
            return
        self._log.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {text}\n')
        self._log.flush()

    def resumed_at(self, iteration: int, finished: bool = False) -> None:
        """Drop the CSV rows logged after ``iteration`` by the run that stopped (they are redone). For a
        ``finished`` run (``iteration`` is the last), the final validation rows logged at ``iteration``
        after its checkpoint are dropped too (the validation is redone)."""
        if not self.enabled:
            return
        self._csv_file.close()
        path = self.run_dir / 'metrics.csv'
        with open(path, newline='') as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [
            r
            for r in rows[1:]
            if r
            and (int(r[0]) < iteration or (int(r[0]) == iteration and not (finished and self._after(r[1]))))
        ]
        tmp = path.with_suffix('.csv.tmp')
        with open(tmp, 'w', newline='') as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, path)
        self._csv_file = open(path, 'a', newline='')
        self._csv = csv.writer(self._csv_file)

    @staticmethod
    def _after(name: str) -> bool:
        """Rows of the final validation (every name but the training ones, logged before the checkpoint)."""
        return not name.startswith('train/')

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.time()
        for name, value in values.items():
            self._csv.writerow([iteration, name, f'{value:.6g}', f'{now:.3f}'])
            if self.writer is not None:
                self.writer.add_scalar(name, value, iteration)
        self._csv_file.flush()

    def progress(self, iteration: int, loss: float, images_per_s: float) -> None:
        if self.bar is None or self.bar.disable:  # no bar (not a terminal): a plain line instead
            if self.enabled:
                self.log(f'iteration {iteration}: loss {loss:.4f}, {images_per_s:.1f} img/s')
        else:
            self.bar.n = iteration
            self.bar.set_postfix(loss=f'{loss:.4f}', img_s=f'{images_per_s:.1f}', refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self._csv_file.close()
        self._log.close()
