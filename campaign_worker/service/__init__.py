"""Service layer: CampaignManager orchestrates the domain over abstract ports."""
