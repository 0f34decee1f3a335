"""Running the host under gunicorn (threaded workers), configured from code."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication


class _Server(BaseApplication):
    def __init__(self, instance, options):
        self.instance = instance
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        # Built in each worker after the fork: no database connection crosses a fork.
        from .host import Host

        return Host(self.instance)


def run(instance, *, host="127.0.0.1", port=8000, workers=2, threads=8, access_log=False):
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "timeout": 60,
        "graceful_timeout": 20,
        "forwarded_allow_ips": "127.0.0.1",
        "proc_name": "kamengsite",
    }
    _Server(instance, options).run()
