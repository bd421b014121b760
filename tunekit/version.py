"""tunekit's version, in a module of its own so any module can read it without importing the
package facade (which would make ``tunekit → compare → train → tunekit`` a cycle)."""

__version__ = "0.1.0"
