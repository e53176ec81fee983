-- A storefront's lifecycle policy (trial cooldown, pausing trials); '{}' means the defaults.
ALTER TABLE storefronts ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '{}';
