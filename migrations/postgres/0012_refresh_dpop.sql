-- DPoP (RFC 9449): the thumbprint of the key a refresh token is bound to; a bound refresh token is
-- accepted only with a proof signed by that key, and its successors stay bound to it.
ALTER TABLE refresh_tokens ADD COLUMN dpop_jkt TEXT;
