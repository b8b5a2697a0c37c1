"""The demo site: ASP.NET's session-state walkthrough scenarios, one page each."""
