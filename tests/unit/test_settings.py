"""nlportmap.settings: the request's NLPORTMAP_* values where lock and records read them."""
from nlportmap import settings


def test_request_value_wins_absent_falls_back_to_the_process_empty_means_default(monkeypatch):
    monkeypatch.setenv("NLPORTMAP_LOCK_DIR", "/from/process")
    assert settings.get("NLPORTMAP_LOCK_DIR", "/default") == "/from/process"   # no request
    with settings.using({"NLPORTMAP_LOCK_DIR": "/from/request"}):
        assert settings.get("NLPORTMAP_LOCK_DIR", "/default") == "/from/request"
    with settings.using({}):  # a request that does not carry it (a test's synthetic environ)
        assert settings.get("NLPORTMAP_LOCK_DIR", "/default") == "/from/process"
    with settings.using({"NLPORTMAP_LOCK_DIR": ""}):  # the daemon: the caller left it unset
        assert settings.get("NLPORTMAP_LOCK_DIR", "/default") == "/default"
    assert settings.get("NLPORTMAP_LOCK_DIR", "/default") == "/from/process"  # restored


def test_lock_and_records_read_the_current_request(monkeypatch, tmp_path):
    from nlportmap import lock, records
    monkeypatch.setenv("NLPORTMAP_LOCK_DIR", str(tmp_path / "p"))
    with settings.using({"NLPORTMAP_LOCK_DIR": str(tmp_path / "r"), "NLPORTMAP_STATE_DIR": str(tmp_path / "s")}):
        assert lock.lock_path().startswith(str(tmp_path / "r") + "/netns-")
        assert records.base_dir() == str(tmp_path / "s")
    assert lock.lock_path().startswith(str(tmp_path / "p") + "/netns-")
