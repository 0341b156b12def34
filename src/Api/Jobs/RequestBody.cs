using System.Buffers;
using Microsoft.Net.Http.Headers;

namespace Conveyor.Api.Jobs;

/// <summary>Checks a JSON request's media type and reads its body into memory, refusing to buffer more than a limit.</summary>
internal static class RequestBody
{
    /// <summary>
    /// Why the body cannot be read as JSON (for a 415), or null when it can: JSON with no charset or
    /// UTF-8 (RFC 8259 allows nothing else), and no Content-Encoding but <c>identity</c>: a compressed
    /// body would otherwise be parsed as it arrived.
    /// </summary>
    public static string? UnsupportedMedia(HttpRequest request, string what)
    {
        if (!request.HasJsonContentType())
        {
            var given = string.IsNullOrEmpty(request.ContentType) ? "no Content-Type" : $"Content-Type {Cut(request.ContentType)}";
            return $"Send {what} as a JSON body with Content-Type: application/json (it came with {given}).";
        }

        if (MediaTypeHeaderValue.TryParse(request.ContentType, out var type)
            && HeaderUtilities.RemoveQuotes(type.Charset).Value is { Length: > 0 } charset
            && !charset.Equals("utf-8", StringComparison.OrdinalIgnoreCase)
            && !charset.Equals("utf8", StringComparison.OrdinalIgnoreCase))
        {
            return $"JSON is read as UTF-8 only; charset '{charset}' is not supported.";
        }

        var encodings = request.Headers.ContentEncoding;
        return encodings.Count > 0 && encodings.Any(e => !string.Equals(e?.Trim(), "identity", StringComparison.OrdinalIgnoreCase))
            ? $"Content-Encoding '{encodings}' is not supported; send the body uncompressed."
            : null;
    }

    /// <summary>A client's header as a detail quotes it: at most 100 characters.</summary>
    private static string Cut(string text) => text.Length <= 100 ? text : string.Concat(text.AsSpan(0, 100), "…");

    /// <summary>
    /// The body, or null when it is longer than <paramref name="limit"/> bytes. Reads at most
    /// <paramref name="limit"/> + 1 bytes, so a chunked body without Content-Length is caught too.
    /// </summary>
    public static Task<byte[]?> ReadAtMostAsync(Stream body, int limit, CancellationToken cancellationToken) =>
        ReadAtMostAsync(body, declaredLength: null, limit, cancellationToken);

    /// <summary>
    /// As <see cref="ReadAtMostAsync(Stream, int, CancellationToken)"/>; a body whose length is declared
    /// (Content-Length, which the server enforces) and within the limit is read straight into an array
    /// of that size, without an intermediate buffer.
    /// </summary>
    /// <remarks>
    /// A UTF-8 byte order mark at the start is dropped, as RFC 8259 (section 8.1) lets a parser do and ASP.NET Core's own
    /// JSON binding does: editors and Windows PowerShell 5 write files with one, and a body sent from such a file was
    /// refused as "not valid JSON" for three bytes the client cannot see. Dropped here, before anything reads the body,
    /// so that the parsers, a batch's jobs cut from it, the stored request and the hash a repeat is recognised by all see
    /// the JSON alone: the same request sent with and without the mark is one request.
    /// </remarks>
    public static async Task<byte[]?> ReadAtMostAsync(Stream body, long? declaredLength, int limit, CancellationToken cancellationToken) =>
        WithoutByteOrderMark(await ReadAsync(body, declaredLength, limit, cancellationToken));

    private static byte[]? WithoutByteOrderMark(byte[]? body) =>
        body is [0xEF, 0xBB, 0xBF, ..] ? body[3..] : body;

    private static async Task<byte[]?> ReadAsync(Stream body, long? declaredLength, int limit, CancellationToken cancellationToken)
    {
        if (declaredLength is { } length && length >= 0 && length <= limit)
        {
            return await ReadDeclaredAsync(body, (int)length, cancellationToken);
        }

        using var buffer = new MemoryStream();
        var chunk = ArrayPool<byte>.Shared.Rent(16 * 1024);
        try
        {
            while (true)
            {
                var wanted = (int)Math.Min(chunk.Length, limit + 1L - buffer.Length);
                var read = await body.ReadAsync(chunk.AsMemory(0, wanted), cancellationToken);
                if (read == 0)
                {
                    return buffer.ToArray();
                }

                buffer.Write(chunk, 0, read);
                if (buffer.Length > limit)
                {
                    return null;
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }

    private static async Task<byte[]> ReadDeclaredAsync(Stream body, int length, CancellationToken cancellationToken)
    {
        var bytes = new byte[length];
        var filled = 0;
        while (filled < length)
        {
            var read = await body.ReadAsync(bytes.AsMemory(filled), cancellationToken);
            if (read == 0)
            {
                // Ended early: what arrived, as the buffered path would answer.
                return bytes[..filled];
            }

            filled += read;
        }

        return bytes;
    }
}
