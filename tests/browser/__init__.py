"""The JavaScript client in a real headless Chromium, driven by Playwright."""
