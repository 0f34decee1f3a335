"""kamengsite: a 卡盟 platform where every sub-site is a folder the host turns into its own Flask app."""

__version__ = "0.1.0"
