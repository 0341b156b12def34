using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// The fingerprint as pods before 2026-12-02 computed it, free-form JSON objects written in
/// the order their members arrived (ADR 0011, amendment), for rows the tests write as such a pod would.
/// </summary>
public static class LegacyFingerprints
{
    private static readonly JsonSerializerOptions ArrivalOrder = new() { DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };

    public static byte[] Of(object command) =>
        SHA256.HashData(JsonSerializer.SerializeToUtf8Bytes(command, command.GetType(), ArrivalOrder))[..Conveyor.Storage.PayloadFingerprint.Length];
}
