"""The API's endpoints under ``/api/v1`` on every site (a core plugin). See docs/api.md."""
