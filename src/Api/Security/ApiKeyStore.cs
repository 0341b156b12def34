using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Security;

/// <summary>
/// The configured keys, held as SHA-256 digests. A presented key is hashed and compared with every
/// digest in constant time, so neither the comparison nor the position of a match shows in the timing.
/// </summary>
public sealed class ApiKeyStore
{
    private readonly (byte[] Digest, ApiKeyIdentity Identity)[] _keys;

    public ApiKeyStore(IOptions<ApiKeyOptions> options) =>
        _keys = [.. options.Value.ApiKeys.Select(k => (Digest(k.Key), new ApiKeyIdentity(k.Name, k.Scopes)))];

    public int Count => _keys.Length;

    public ApiKeyIdentity? Find(string presentedKey)
    {
        var presented = Digest(presentedKey);
        ApiKeyIdentity? found = null;
        foreach (var (digest, identity) in _keys)
        {
            // No early exit: every key is compared whatever matched before.
            if (CryptographicOperations.FixedTimeEquals(digest, presented))
            {
                found = identity;
            }
        }

        return found;
    }

    private static byte[] Digest(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));
}

/// <summary>Who a key belongs to and what it may do.</summary>
public sealed record ApiKeyIdentity(string Name, IReadOnlyList<string> Scopes);
