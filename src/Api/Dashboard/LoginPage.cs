using System.Text;
using System.Text.Encodings.Web;

namespace Conveyor.Api.Dashboard;

/// <summary>The sign-in form, rendered on the server with every value HTML-encoded; no script.</summary>
internal static class LoginPage
{
    public static string Render(string antiforgeryToken, string? error)
    {
        var html = HtmlEncoder.Default;
        var page = new StringBuilder();
        page.Append("""
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>Sign in · Conveyor</title>
            <link rel="icon" href="data:,">
            <link rel="stylesheet" href="/dashboard/app.css">
            </head>
            <body class="login">
            <main class="card login-card">
            <h1>Conveyor</h1>
            <p>Paste an API key to open the operations dashboard.</p>
            """);
        if (error is not null)
        {
            page.Append("<p class=\"error\" role=\"alert\" id=\"login-error\">").Append(html.Encode(error)).Append("</p>\n");
        }

        page.Append("""
            <form method="post" action="/dashboard/login" autocomplete="off">
            <label for="apiKey">API key</label>
            <input type="password" id="apiKey" name="apiKey" required autofocus spellcheck="false">
            <input type="hidden" name="
            """)
            .Append(html.Encode(Security.AccessControl.AntiforgeryFieldName))
            .Append("\" value=\"")
            .Append(html.Encode(antiforgeryToken))
            .Append("""
            ">
            <button type="submit" id="sign-in">Sign in</button>
            </form>
            <p class="hint">The session lasts while you use it and ends after a short idle time. Keys are never stored in the browser.</p>
            </main>
            </body>
            </html>
            """);
        return page.ToString();
    }
}
