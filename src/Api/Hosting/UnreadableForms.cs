namespace Conveyor.Api.Hosting;

/// <summary>Tells a malformed form from a body that failed to arrive, when reading a request's form throws.</summary>
internal static class UnreadableForms
{
    /// <summary>
    /// True when <paramref name="exception"/>, thrown reading the form of <paramref name="http"/>, means
    /// the client sent a malformed form: the form reader's <see cref="InvalidDataException"/> (no
    /// multipart boundary, too many or too long fields) or the multipart reader's
    /// <see cref="IOException"/> for a body that ends inside a part (garbage for parts), which ASP.NET
    /// Core's anti-forgery takes as an unreadable, so invalid, request too; or the
    /// <see cref="NotSupportedException"/> of a charset the form reader cannot decode with (UTF-7, which
    /// .NET refuses), which anti-forgery lets through unwrapped. False for a body that failed
    /// to arrive, answered as such by the exception handler: Kestrel's
    /// <see cref="BadHttpRequestException"/> (cut short, too slow, too large) and any failure once the
    /// client is gone.
    /// </summary>
    public static bool IsMalformed(Exception exception, HttpContext http) =>
        exception is InvalidDataException or NotSupportedException
        || (exception is IOException and not BadHttpRequestException && !http.RequestAborted.IsCancellationRequested);
}
