// Package tlscerts is the provider's TLS lifecycle, apart from what it
// serves: the serving certificate and Gatekeeper's client CA loaded from
// files and reloaded on change (Certs), with a grace for a CA that left;
// the Secrets mirrored into those files within milliseconds of a change
// (SecretSync); the serving certificate issued and rotated by cert-controller
// (Rotation, RunRotator); and readiness that waits until the Provider
// object's caBundle trusts that certificate (ProviderWatch).
//
// It lives under provider/ because only the provider serves TLS; it imports
// nothing of the provider's recording, so either can be read alone.
package tlscerts
