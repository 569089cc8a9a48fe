"""Development and test tools, outside the runtime package: local servers, the load check, raw HTTP."""
