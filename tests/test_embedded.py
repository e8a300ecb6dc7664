"""Embedded mode's own bookkeeping: pgserver's file of the processes using its server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.embedded import _repair_handles


def test_an_emptied_or_stale_handle_file_is_made_a_list_of_live_pids(tmp_path: Path) -> None:
    """pgserver truncates, then writes the file: a process killed in between left it empty, and
    every later command failed on its JSON. Killed processes never leave it either."""
    handles = tmp_path / ".handle_pids.json"
    handles.write_text("")
    _repair_handles(tmp_path)
    assert json.loads(handles.read_text()) == []
    handles.write_text(json.dumps([os.getpid(), 2**22 + 1]))  # the second one: no such pid
    _repair_handles(tmp_path)
    assert json.loads(handles.read_text()) == [os.getpid()]
    handles.write_text('{"not": "a list"')
    _repair_handles(tmp_path)
    assert json.loads(handles.read_text()) == []
    handles.unlink()
    _repair_handles(tmp_path)  # none yet: pgserver makes it
    assert not handles.exists()
